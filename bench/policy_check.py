"""The cost of one policy check: blockyard's remembered result against oslo.policy itself.

Every request makes one or two checks (the route's rule, then the resource's), with the same
few callers and targets over and over; `blockyard.policy.Policy` asks oslo.policy once per
(rule, caller, target) and remembers the answer. The peer is the same engine's oslo.policy
enforcer asked every time, in the same process, on the same rules and credentials.

    .venv/bin/python bench/policy_check.py [--rounds 20000]

Target: a remembered check in a few microseconds, far below a request's own cost (~1 ms).
"""

from __future__ import annotations

import argparse
import time
import uuid

from blockyard.identity import MEMBER, READER, Identity
from blockyard.policy import Policy
from blockyard.service import policies

RULES = ("volume:get", "volume:delete", "volume:extend",
         "volume_extension:volume_admin_actions:reset_status")


def per_call(fn: object, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    project = uuid.uuid4().hex
    who = Identity(user_id=uuid.uuid4().hex, project_id=project,
                   roles=frozenset({READER, MEMBER}))
    target = {"project_id": project, "user_id": who.user_id}
    policy = Policy(policies.DEFAULTS)
    enforcer = policy._enforcer
    creds = who.policy_credentials()
    print(f"{'rule':<54}{'blockyard (remembered)':>24}{'oslo.policy':>14}{'ratio':>8}")
    for rule in RULES:
        policy.check(who, rule, target)  # the first check asks oslo.policy
        ours = per_call(lambda r=rule: policy.check(who, r, target), args.rounds)
        peer = per_call(lambda r=rule: enforcer.enforce(r, dict(target), creds),
                        max(args.rounds // 10, 100))
        print(f"{rule:<54}{ours * 1e6:>21.2f} µs{peer * 1e6:>11.1f} µs{peer / ours:>7.0f}x")


if __name__ == "__main__":
    main()
