"""Policy checks with oslo.policy: rule defaults in code, an operator's YAML file over them.

One `Policy` per server, built once from the rule defaults of that server (Cinder's for the
volume API, Nova's for the compute agent) plus, optionally, the operator's policy file in
oslo.policy's format, so an existing Cinder `policy.yaml` applies unchanged. The file is read
when the `Policy` is built: a change takes a restart.

oslo.policy evaluates a rule in about a hundred microseconds (its checks introspect their own
signatures on every call); a request makes one or two checks with the same few callers and
targets over and over, so results are remembered per (rule, caller, target). The rules never
change after start-up, so a remembered result never goes stale.

oslo.policy reads its options from an oslo.config object; each `Policy` has a private one, so
nothing leaks between two servers in one process, or between tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from blockyard.errors import ConfigError, Forbidden
from blockyard.identity import Identity

__all__ = ["Policy", "RuleDefault", "target_of"]

RuleDefault = oslo_policy.RuleDefault

#: where both servers' configs name the operator's file (errors about it name this key)
POLICY_FILE_KEY = "auth.policy_file"

#: remembered results; callers x rules x targets of a busy server fit many times over
CACHE_SIZE = 8192

_TargetKey = tuple[tuple[str, Any], ...]


def target_of(who: Identity, project_id: str | None = None) -> dict[str, Any]:
    """The target of a check: the resource's project (the caller's own when the action is on
    no resource yet, as Cinder's default target) and the caller's user id."""
    return {"project_id": (who.project_id or None) if project_id is None else project_id,
            "user_id": who.user_id}


def _credentials_key(who: Identity) -> tuple[Any, ...]:
    """What of `who` a rule can look at (`Identity.policy_credentials`), as a key: a plain
    tuple hashes and compares several times faster than the dataclass."""
    return (who.user_id, who.project_id, who.roles, who.user_domain_id,
            who.project_domain_id, who.domain_id, who.system_scope, who.is_admin_project,
            who.service_user_id, who.service_project_id, who.service_roles)


class Policy:
    """An enforcer of named rules: `defaults` in code, `policy_file` (YAML or JSON, Cinder's
    format) overriding any of them."""

    def __init__(self, defaults: Iterable[RuleDefault], policy_file: str | Path | None = None,
                 ) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="blockyard", default_config_files=[], default_config_dirs=[])
        path = None
        if policy_file is not None:
            path = Path(policy_file).absolute()
            if not path.is_file():
                raise ConfigError(POLICY_FILE_KEY, f"no such file: {path}")
        # no file: the defaults alone (not a `policy.yaml` found in ~ or /etc by chance)
        enforcer = oslo_policy.Enforcer(conf, policy_file=str(path) if path else "/dev/null")
        conf.set_override("policy_dirs", [], group="oslo_policy")
        enforcer.register_defaults(list(defaults))
        try:
            enforcer.load_rules()
        except Exception as exc:  # oslo.policy raises bare parse errors of YAML/JSON
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(POLICY_FILE_KEY, f"cannot read {path}: {first}") from None
        # the rules are final: later checks must not look at the file (a stat and a parse of
        # every policy.d directory per check, hundreds of microseconds)
        enforcer.use_conf = False
        self._enforcer = enforcer
        self.names = frozenset(enforcer.registered_rules)
        self._cache: dict[tuple[str, tuple[Any, ...], _TargetKey], bool] = {}

    def check(self, who: Identity, rule: str, target: Mapping[str, Any] | None = None) -> bool:
        """Does `rule` allow `who` to act on `target` (default: the caller's own project)?

        A rule name that no default declares is a programming error (KeyError), never a
        silent deny: a typo would otherwise lock everyone out of an endpoint.
        """
        if rule not in self.names:
            raise KeyError(f"no policy rule named {rule!r}")
        tgt = target if target is not None else target_of(who)
        key = (rule, _credentials_key(who), tuple(tgt.items()))
        found = self._cache.get(key)  # one dict lookup: atomic under the GIL, no lock
        if found is not None:
            return found
        try:
            allowed = bool(self._enforcer.enforce(rule, dict(tgt), who.policy_credentials()))
        except oslo_policy.InvalidScope:  # a rule with scope_types the token's scope is not
            allowed = False
        if len(self._cache) >= CACHE_SIZE:
            self._cache = {}  # rare (a full cache of distinct callers): start afresh
        self._cache[key] = allowed
        return allowed

    def enforce(self, who: Identity, rule: str, target: Mapping[str, Any] | None = None) -> None:
        """Raise `Forbidden` (HTTP 403, Cinder's wording) unless `rule` allows it."""
        if not self.check(who, rule, target):
            raise Forbidden(rule)

    def check_str(self, rule: str) -> str:
        """The check string in force for `rule` (the operator's, else the default)."""
        return str(self._enforcer.rules[rule])
