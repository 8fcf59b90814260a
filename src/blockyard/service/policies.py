"""Cinder 29's policy rules: their names and default check strings, and the server's engine.

The names and defaults are Cinder's (its ``cinder/policies/`` package), so that an operator's
Cinder `policy.yaml` means the same here. Only the rules of APIs blockyard serves are declared
(plus the base rules they refer to); backups, manageable volumes, clusters, workers and default
types are not served.

The personas (Cinder's "Xena" defaults): a project reader lists and shows, a project member
also creates, changes, attaches and deletes, and the admin role may do anything in any project,
including the admin-only APIs (`admin_api`).

`engine()` is the running server's `Policy`, built once from these defaults (and the operator's
file, when `use(Policy(DEFAULTS, path))` installed one at start-up).
"""

from __future__ import annotations

import threading

from blockyard.policy import Policy, RuleDefault

# the base rules, referred to by name below
ADMIN_API = "rule:admin_api"
READER = "rule:xena_system_admin_or_project_reader"
MEMBER = "rule:xena_system_admin_or_project_member"

BASE: dict[str, str] = {
    "context_is_admin": "role:admin",
    "admin_api": "is_admin:True or (role:admin and is_admin_project:True)",
    "xena_system_admin_or_project_reader": "(role:admin) or (role:reader and "
                                           "project_id:%(project_id)s)",
    "xena_system_admin_or_project_member": "(role:admin) or (role:member and "
                                           "project_id:%(project_id)s)",
    # kept for operators' files that still name them (Cinder keeps them too)
    "admin_or_owner": "is_admin:True or (role:admin and is_admin_project:True) or "
                      "project_id:%(project_id)s",
    "system_or_domain_or_project_admin": "(role:admin and system_scope:all) or "
                                         "(role:admin and domain_id:%(domain_id)s) or "
                                         "(role:admin and project_id:%(project_id)s)",
}

#: rule name → default, grouped as Cinder groups them (by its policy module)
RULES: dict[str, str] = {
    # volumes
    "volume:create": MEMBER,
    "volume:create_from_image": MEMBER,
    "volume:get": READER,
    "volume:get_all": READER,
    "volume:update": MEMBER,
    "volume:delete": MEMBER,
    "volume:force_delete": ADMIN_API,
    "volume:multiattach": MEMBER,
    "volume_extension:volume_host_attribute": ADMIN_API,
    "volume_extension:volume_tenant_attribute": READER,
    "volume_extension:volume_mig_status_attribute": ADMIN_API,
    "volume_extension:volume_encryption_metadata": READER,
    # volume actions
    "volume:extend": MEMBER,
    "volume:extend_attached_volume": MEMBER,
    "volume_extension:volume_admin_actions:extend_volume_completion": ADMIN_API,
    "volume:revert_to_snapshot": MEMBER,
    "volume_extension:volume_admin_actions:reset_status": ADMIN_API,
    "volume:retype": MEMBER,
    "volume:update_readonly_flag": MEMBER,
    "volume_extension:volume_admin_actions:force_delete": ADMIN_API,
    "volume_extension:volume_actions:upload_public": ADMIN_API,
    "volume_extension:volume_actions:upload_image": MEMBER,
    "volume_extension:volume_admin_actions:force_detach": ADMIN_API,
    "volume_extension:volume_admin_actions:migrate_volume": ADMIN_API,
    "volume_extension:volume_admin_actions:migrate_volume_completion": ADMIN_API,
    "volume_extension:volume_actions:initialize_connection": MEMBER,
    "volume_extension:volume_actions:terminate_connection": MEMBER,
    "volume_extension:volume_actions:roll_detaching": MEMBER,
    "volume_extension:volume_actions:reserve": MEMBER,
    "volume_extension:volume_actions:unreserve": MEMBER,
    "volume_extension:volume_actions:begin_detaching": MEMBER,
    "volume_extension:volume_actions:attach": MEMBER,
    "volume_extension:volume_actions:detach": MEMBER,
    "volume:reimage": MEMBER,
    "volume:reimage_reserved": MEMBER,
    # volume metadata
    "volume:get_volume_metadata": READER,
    "volume:create_volume_metadata": MEMBER,
    "volume:update_volume_metadata": MEMBER,
    "volume:delete_volume_metadata": MEMBER,
    "volume_extension:volume_image_metadata:show": READER,
    "volume_extension:volume_image_metadata:set": MEMBER,
    "volume_extension:volume_image_metadata:remove": MEMBER,
    "volume:update_volume_admin_metadata": ADMIN_API,
    # attachments
    "volume:attachment_create": MEMBER,
    "volume:attachment_update": MEMBER,
    "volume:attachment_delete": MEMBER,
    "volume:attachment_complete": MEMBER,
    "volume:multiattach_bootable_volume": MEMBER,
    # snapshots, their actions and metadata
    "volume:get_all_snapshots": READER,
    "volume_extension:extended_snapshot_attributes": READER,
    "volume:create_snapshot": MEMBER,
    "volume:get_snapshot": READER,
    "volume:update_snapshot": MEMBER,
    "volume:delete_snapshot": MEMBER,
    "volume_extension:snapshot_admin_actions:reset_status": ADMIN_API,
    "snapshot_extension:snapshot_actions:update_snapshot_status": MEMBER,
    "volume_extension:snapshot_admin_actions:force_delete": ADMIN_API,
    "snapshot_extension:snapshot_unmanage": ADMIN_API,
    "volume_extension:volume_unmanage": ADMIN_API,
    "volume:get_snapshot_metadata": READER,
    "volume:update_snapshot_metadata": MEMBER,
    "volume:delete_snapshot_metadata": MEMBER,
    # volume types, their extra specs, access lists and encryption
    "volume_extension:type_create": ADMIN_API,
    "volume_extension:type_update": ADMIN_API,
    "volume_extension:type_delete": ADMIN_API,
    "volume_extension:type_get": READER,
    "volume_extension:type_get_all": READER,
    "volume_extension:access_types_extra_specs": READER,
    "volume_extension:access_types_qos_specs_id": ADMIN_API,
    "volume_extension:types_extra_specs:index": READER,
    "volume_extension:types_extra_specs:create": ADMIN_API,
    "volume_extension:types_extra_specs:show": READER,
    "volume_extension:types_extra_specs:read_sensitive": ADMIN_API,
    "volume_extension:types_extra_specs:update": ADMIN_API,
    "volume_extension:types_extra_specs:delete": ADMIN_API,
    "volume_extension:volume_type_access": MEMBER,
    "volume_extension:volume_type_access:addProjectAccess": ADMIN_API,
    "volume_extension:volume_type_access:removeProjectAccess": ADMIN_API,
    "volume_extension:volume_type_access:get_all_for_type": ADMIN_API,
    "volume_extension:volume_type_encryption": ADMIN_API,
    "volume_extension:volume_type_encryption:create": ADMIN_API,
    "volume_extension:volume_type_encryption:get": ADMIN_API,
    "volume_extension:volume_type_encryption:update": ADMIN_API,
    "volume_extension:volume_type_encryption:delete": ADMIN_API,
    "volume_extension:default_set_or_update": ADMIN_API,
    "volume_extension:default_get": ADMIN_API,
    "volume_extension:default_get_all": ADMIN_API,
    "volume_extension:default_unset": ADMIN_API,
    # QoS specs
    "volume_extension:qos_specs_manage:get_all": ADMIN_API,
    "volume_extension:qos_specs_manage:get": ADMIN_API,
    "volume_extension:qos_specs_manage:create": ADMIN_API,
    "volume_extension:qos_specs_manage:update": ADMIN_API,
    "volume_extension:qos_specs_manage:delete": ADMIN_API,
    # quotas, quota classes, limits
    "volume_extension:quotas:show": READER,
    "volume_extension:quotas:update": ADMIN_API,
    "volume_extension:quotas:delete": ADMIN_API,
    "volume_extension:quota_classes:get": ADMIN_API,
    "volume_extension:quota_classes:update": ADMIN_API,
    "limits_extension:used_limits": READER,
    # the deployment: services, hosts, pools, capabilities
    "volume_extension:services:index": ADMIN_API,
    "volume_extension:services:update": ADMIN_API,
    "volume:freeze_host": ADMIN_API,
    "volume:thaw_host": ADMIN_API,
    "volume:failover_host": ADMIN_API,
    "volume_extension:hosts": ADMIN_API,
    "scheduler_extension:scheduler_stats:get_pools": ADMIN_API,
    "volume_extension:capabilities": ADMIN_API,
    "clusters:get_all": ADMIN_API,
    "clusters:get": ADMIN_API,
    "clusters:update": ADMIN_API,
    "workers:cleanup": ADMIN_API,
    # messages
    "message:get_all": READER,
    "message:get": READER,
    "message:delete": MEMBER,
    # groups, their actions, group types and group snapshots
    "group:get_all": READER,
    "group:create": MEMBER,
    "group:get": READER,
    "group:update": MEMBER,
    "group:group_project_attribute": ADMIN_API,
    "group:delete": MEMBER,
    "group:reset_status": ADMIN_API,
    "group:enable_replication": MEMBER,
    "group:disable_replication": MEMBER,
    "group:failover_replication": MEMBER,
    "group:list_replication_targets": MEMBER,
    "group:group_types:create": ADMIN_API,
    "group:group_types:update": ADMIN_API,
    "group:group_types:delete": ADMIN_API,
    "group:access_group_types_specs": ADMIN_API,
    "group:group_types_specs:get": ADMIN_API,
    "group:group_types_specs:get_all": ADMIN_API,
    "group:group_types_specs:create": ADMIN_API,
    "group:group_types_specs:update": ADMIN_API,
    "group:group_types_specs:delete": ADMIN_API,
    "group:get_all_group_snapshots": READER,
    "group:create_group_snapshot": MEMBER,
    "group:get_group_snapshot": READER,
    "group:delete_group_snapshot": MEMBER,
    "group:update_group_snapshot": MEMBER,
    "group:group_snapshot_project_attribute": ADMIN_API,
    "group:reset_group_snapshot_status": ADMIN_API,
    # volume transfers
    "volume:get_all_transfers": READER,
    "volume:create_transfer": MEMBER,
    "volume:get_transfer": READER,
    "volume:accept_transfer": MEMBER,
    "volume:delete_transfer": MEMBER,
}

DEFAULTS: tuple[RuleDefault, ...] = tuple(
    RuleDefault(name, check) for name, check in {**BASE, **RULES}.items())

#: the rule that decides whether a caller sees and acts across projects (Cinder's
#: `context.is_admin`, which its RequestContext takes from this rule)
CROSS_PROJECT = "context_is_admin"

_engine: Policy | None = None
_lock = threading.Lock()


def engine() -> Policy:
    """The server's policy: Cinder's defaults unless `use` installed another."""
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = Policy(DEFAULTS)
    return _engine


def use(policy: Policy | None) -> Policy | None:
    """Install `policy` (None: back to the defaults, built on next use); returns the old one."""
    global _engine
    with _lock:
        old, _engine = _engine, policy
    return old


def load(policy_file: str | None) -> Policy:
    """Build and install the server's policy: the defaults, under the operator's file."""
    built = Policy(DEFAULTS, policy_file)
    use(built)
    return built
