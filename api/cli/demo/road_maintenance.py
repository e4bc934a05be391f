"""Road maintenance: a fleet operator uploads its drivers' sensor readings; the road service
reads only the fields the purpose allows, of the drivers who consented, and nothing of the
one who did not. Alice, if the utility knows her too, drives here under another pseudonym."""

from __future__ import annotations

import json

from api.cli.demo.common import Story, receipt_text
from api.cli.demo.stage import Entity, Party, Stage

PURPOSE = "road-maintenance"
FIELDS = ["lat", "lon", "vibration"]
# Also cast by the erasure story: the same operator and service, admitted once per run.
FLEET: Entity = ("the fleet operator Transroute", "providers", "provider")
ROADS: Entity = ("the road service Voirie", "services", "consumer")


def sensor_csv(run_id: str, drivers: list[Party], per_driver: int = 2) -> bytes:
    """Made-up readings: an employee number the purpose never discloses, a place, a jolt."""
    rows = ["subject_id,driver_id,recorded_at,lat,lon,vibration"]
    for d, driver in enumerate(drivers):
        for k in range(per_driver):
            rows.append(
                f"{driver.id},EMP-{run_id}-{d},2030-05-0{k + 1}T08:0{d}:00Z,"
                f"45.76{d}{k},4.83{d}{k},{0.2 + 0.3 * d + 0.1 * k:.2f}"
            )
    return ("\n".join(rows) + "\n").encode()


def play(stage: Stage) -> None:
    run = stage.run_id
    fleet, roads = stage.entities(FLEET, ROADS)
    dataset = stage.dataset(fleet, "vehicle-sensors", "vehicle-telemetry", PURPOSE)
    drivers = [
        stage.new_subject(name, stage.wallet(citizen), dataset, "the fleet's dataset")
        for name, citizen in (
            (f"the driver Bruno-{run}", "Bruno"),
            (f"the driver Chloé-{run}", "Chloé"),
            (f"the citizen Alice-{run}", "Alice"),
        )
    ]
    _two_pseudonyms(stage, drivers[2], dataset)
    csv = sensor_csv(run, drivers)
    stage.upload(fleet, dataset, "text/csv", csv, "six sensor readings (CSV) of three drivers")
    consenting, holdout = drivers[:2], drivers[2]
    for driver in consenting:
        stage.consent(driver, roads, dataset, PURPOSE)
    stage.tell(f"{holdout.name} gives no consent")
    _read_sensors(stage, roads, dataset, consenting, holdout)


def _two_pseudonyms(stage: Stage, alice: Party, dataset: str) -> None:
    """Her pseudonym here and those of her other datasets: only her wallet links them."""
    others = stage.other_pseudonyms(alice, dataset)
    if not others:
        stage.tell(
            f"{alice.name} drives for the fleet: any other dataset she joins gets a pseudonym "
            f"of its own from her wallet, sharing nothing on the ledger with {alice.id[:12]}…; "
            "only her wallet links them"
        )
        return
    stage.check(alice.id not in others.values(), "Alice's datasets should see distinct pseudonyms")
    listed = " and ".join(f"{nym[:12]}… ({owner})" for owner, nym in others.items())
    stage.tell(
        f"{alice.name} drives for the fleet too: her pseudonyms {listed} and {alice.id[:12]}… "
        "(the fleet) share nothing on the ledger; only her wallet links them"
    )


def _read_sensors(
    stage: Stage, roads: Party, dataset: str, consenting: list[Party], holdout: Party
) -> None:
    with stage.doing("the road service reading the sensor data"):
        out = roads.api.access(dataset, PURPOSE, fields=FIELDS)
    got = {rec["subject_id"] for rec in out["records"]}
    stage.check(
        got == {d.id for d in consenting} and len(out["records"]) == 2 * len(consenting),
        f"the road service should read the 4 readings of the 2 consenting drivers, "
        f"it read {len(out['records'])} of {len(got)} drivers",
    )
    shapes = {tuple(sorted(rec["payload"])) for rec in out["records"]}
    stage.check(
        shapes == {tuple(sorted(FIELDS))}, f"the records should hold only {FIELDS}: {shapes}"
    )
    sample = out["records"][0]["payload"]
    stage.tell(
        f"the road service asks for {', '.join(FIELDS)} and reads {len(out['records'])} "
        f"readings of the {len(got)} consenting drivers, e.g. {json.dumps(sample)}; "
        f"no driver_id, nothing of {holdout.name} {receipt_text(out['receipt'])}"
    )
    no = stage.refused(
        lambda: roads.api.access(dataset, PURPOSE, fields=[*FIELDS, "driver_id"]),
        "the road service asking for driver_id",
    )
    stage.tell(f"it asks for driver_id too and is refused: {no.detail}")
    everyone = [d.id for d in [*consenting, holdout]]
    with stage.doing("the road service naming all three drivers"):
        out = roads.api.access(dataset, PURPOSE, subjects=everyone, fields=FIELDS)
    stage.check(
        out["denied"] == [[holdout.id, "no_consent"]],
        f"{holdout.name} should be denied for no consent: {out['denied']}",
    )
    stage.tell(
        f"naming all three drivers, it is told {holdout.name}: no_consent "
        f"{receipt_text(out['receipt'])}"
    )


STORY = Story(
    "road-maintenance",
    "Road maintenance: the road service reads what consenting drivers allow",
    play,
)
