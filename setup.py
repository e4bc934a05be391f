"""Which packages the wheel ships; everything else about the distribution is in pyproject.toml.

Why a setup.py: the wheel installs `vault`, `api` and `ledger_bridge` and nothing else at the
top of site-packages, so no other distribution's `migrations` or `bench` can overwrite ours.
The alembic scripts stay in the repository's `migrations/` folder and ship inside the vault as
`vault._migrations` (found by `vault.db`); pyproject.toml's `packages` is either discovered or
listed, never both, and listing every subpackage by hand would drop the next one added.
`bench/` and `tests/` are not shipped: they run from a source checkout.
"""

from setuptools import find_namespace_packages, setup

PRODUCT = ("vault", "api", "ledger_bridge")

setup(
    packages=[
        *find_namespace_packages(include=[f"{p}{s}" for p in PRODUCT for s in ("", ".*")]),
        "vault._migrations",
        "vault._migrations.versions",
    ],
    package_dir={"vault._migrations": "migrations"},
)
