"""Every migration chain that has landed on main, and what each of its revisions is in today's chain.

Why this exists: branches were merged with renumbered migrations, so the ids 0005, 0006 and 0008 have
named different changes on main at different times, and a database only records its id. `kb.migrate`
reads this table to bring a database stamped by any landed chain onto today's chain, probing the schema
(PROBES) where an id is ambiguous. tests/kb/test_migration_history.py checks migrations/versions against
it. The rule, and how to update this file when a migration lands: docs/architecture.md, "Migrations".
"""

from __future__ import annotations

from typing import NamedTuple


class Landed(NamedTuple):
    revision: str  # the id a database stamped by this chain holds in alembic_version
    sha256: str  # of the file as it landed (tests/fixtures/legacy_migrations keeps the older ones)
    today: str  # the revision of today's chain that makes the same schema change


_0001 = Landed("0001", "1d2db0f9855f0e27ad4a4280af1732a0a16d54937113806c40270e65fcd7cfec", "0001")
_0002 = Landed("0002", "53edeacd67b48cd307ff262bcf7578848876c18cdf3b89c7351a40889348d222", "0002")
_0003 = Landed("0003", "777f895167dfc0f49b3fa2a16eaf03581e9eaca04523f02ea74deb11bea96f44", "0003")
# fd4158a's authorship and plan-phrase revisions, kept by b6d039d
_B_0006 = Landed("0006", "9c1341436bd87f0a1ace1c9d6d65849d346be7370b98f86302dba5001ff92f6e", "0004")
_B_0008 = Landed("0008", "26685538d312543019cab5c775c84ee35e8b330fdce99c2dee79045ef190281d", "0005")

CURRENT = "main"

# Each chain, base first, named by the first commit of main (first parent) where it was the head. A chain
# that is a prefix of a later one with the same files (0001 alone, 0001-0003) needs no entry of its own.
CHAINS: dict[str, tuple[Landed, ...]] = {
    # 0002 then cast the view's counts to int (d995797): the same tables, columns and view columns.
    "1aa7580": (
        _0001,
        Landed("0002", "4fb3144f5048ba2192198d05a70e4dcc0b6c1e73ec8dabb78060062390ffd85b", "0002"),
    ),
    "106eb62": (
        _0001,
        _0002,
        _0003,
        Landed("0008", "d6f284cac3f43fdffb427bb74722b19d13d8cbaa4d03d86f9943ca19a9c9a7ee", "0005"),
    ),
    "fd4158a": (_0001, _0002, _0003, _B_0006, _B_0008),
    "b6d039d": (
        _0001,
        _0002,
        _0003,
        _B_0006,
        _B_0008,
        Landed("0005", "f72a4711188cea881186e31a9d22bf33571acca3608d93e11f7b5f71df27ceda", "0006"),
    ),
    # Since 74e2da1: today's chain. A migration that lands is appended here (never edit or renumber these).
    CURRENT: (
        _0001,
        _0002,
        _0003,
        Landed("0004", "7ccfb3b15c13a919a44808de47330ce5af942e9eeb0cc44f0ee32d5b56679853", "0004"),
        Landed("0005", "9f4659bfaa68902181b99bd1fcea7d54154a0068efe76b06a6bb3e86881ae688", "0005"),
        Landed("0006", "336235171514b71c7d4d0cd4ea0a0ae88f21a82ba724a53c0ee59e5fa836340c", "0006"),
        Landed("0007", "67093bb85cfd47ff875e0476a1de97c9d0460b3bde8163a7840004789167475e", "0007"),
        Landed("0009", "f06db3bc2df0d574a8d9f91be27e069e0562f6d172d76600b7ee80a33a459d4d", "0009"),
        Landed("0010", "b668eeef55cbe73866ed08718921971425ea302d210214733b90347cbeeac10a", "0010"),
    ),
}

# Ids that landed with a meaning today's chain does not give them: never used again by a new migration.
# Today's head: what a database made by this code is stamped with (a test checks it is alembic's head), known
# without loading alembic, so a command on an up-to-date database does not pay for reading every revision.
HEAD = CHAINS[CURRENT][-1].revision

RETIRED = frozenset(x.revision for chain in CHAINS.values() for x in chain) - {
    x.revision for x in CHAINS[CURRENT]
}

# What each of today's revisions that an earlier chain numbered differently creates, as (table, column)
# (column None: the table). A schema has a revision's change when it has all of these objects.
PROBES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "0004": (("template_version", "author"), ("solve_step_template", None)),
    "0005": (("trajectory_step", "template_phrase"),),
    "0006": (
        ("pipeline_run", "heartbeat_at"),
        ("training_run", "heartbeat_at"),
        ("training_run", "host"),
        ("training_run", "pid"),
    ),
    "0007": (("retriever_model", None),),
}
