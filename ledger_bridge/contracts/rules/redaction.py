"""Redaction entries: which stored transactions the replicas blank (docs/PBFT.md, "Redaction").

A position (height, batch index) gets one entry, appended with the height `since` of the block
that decided it; the replicas apply it once a stable checkpoint covers that block. Forgetting a
subject adds the positions of every transaction naming them (rules/erasure.py `forget`); the
end of an event's record in the vault adds its reward's (`blank_events`).
"""

from __future__ import annotations

from ledger_bridge.contracts.state import Key, State


def redact(state: State, positions: list[tuple[int, int]], since: int) -> int:
    """Append ("redaction", n) -> [height, index, since] for each position not yet redacted
    (a position names several forgotten subjects at most once). Returns how many it added."""
    done: dict[int, set[int]] = {}
    added = 0
    for h, i in positions:
        if h not in done:
            found = state.group("redaction", "height", h)
            done[h] = {state.get("redaction", n)[1] for (n,) in found}
        if i in done[h]:
            continue
        done[h].add(i)
        n: int = (state.get("meta", "next_redaction") or 0) + 1
        state.put("meta", "next_redaction", n)
        state.put("redaction", n, [h, i, since])
        added += 1
    return added


def blank_events(state: State, keys: list[Key], since: int) -> int:
    """The rewards of these events, `("event", device, event)` keys, whose records left the
    vault: each reward's batch position is redacted, and each entry keeps its key and nothing
    else (the key alone keeps the event unrewardable).

    Why: a claim carries in clear what the vault's record of the event holds (the subject, the
    device and so its district, the time, the quantity), so it goes with the record. Why the
    entry is emptied, not only stripped of the subject: its height, rule and amount match a
    line of the subject's token statement, which stays. A reward batch that also credited
    others is blanked whole, as forgetting does; their balances and statements stand. Returns
    how many positions it added to the redaction entries."""
    positions = set()
    for device, event in keys:
        e = state.get("event", device, event)
        if "height" not in e:
            continue  # blanked already
        positions.add((e["height"], e["index"]))
        state.put("event", device, event, {})
    return redact(state, sorted(positions), since)
