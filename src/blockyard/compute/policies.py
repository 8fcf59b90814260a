"""The compute agent's policy: Nova's rule names and defaults for the routes it serves.

An operator's Nova ``policy.yaml`` applies unchanged to the rules named here (the file is
given by ``[auth] policy_file``). The defaults are Nova's (``nova/policies/base.py``,
``servers.py``, ``volumes_attachments.py``, ``server_external_events.py``, ``volumes.py``,
``console_output.py``, ``flavor_extra_specs.py``), personas:

- project reader: list and show servers and their volume attachments, and (through the
  deprecated proxies) the project's volumes and snapshots;
- project member: also create and delete servers, attach and detach volumes, read a server's
  console log, create and delete volumes and snapshots through the proxies;
- admin: everything, in every project (``all_tenants``);
- service (another OpenStack service's token, e.g. the volume service's): external events,
  assisted volume snapshots, and swapping the volume under a server (os-volume_attachments
  PUT with another volumeId).

Flavors and images have no rule, as in Nova: any authenticated caller lists them.

Another project's server is not found (404) unless the caller passes ``context_is_admin``,
as in Nova, whose database lookups are scoped to the caller's project for non-admins; the
route's own rule then decides between the answer and 403.

One blockyard extension has a rule of its own: adopting a running QEMU by its QMP socket
(``blockyard:qmp_socket``) makes the agent (root) connect to any Unix socket on the host,
so it is admin-only by default.
"""

from __future__ import annotations

from pathlib import Path

from oslo_policy import policy as oslo_policy

from blockyard.identity import Identity
from blockyard.policy import Policy

# -- Nova's base rules (nova/policies/base.py) ------------------------------------------------
ADMIN = "rule:context_is_admin"
PROJECT_MEMBER_OR_ADMIN = "rule:project_member_or_admin"
PROJECT_READER_OR_ADMIN = "rule:project_reader_or_admin"
SERVICE_OR_ADMIN = "rule:service_or_admin"

#: the rule that makes a caller an admin: sees every project's servers
CONTEXT_IS_ADMIN = "context_is_admin"

BASE = [
    oslo_policy.RuleDefault(CONTEXT_IS_ADMIN, "role:admin",
                            "Decides what is required for the 'is_admin:True' check to "
                            "succeed."),
    oslo_policy.RuleDefault("project_member_api", "role:member and project_id:%(project_id)s",
                            "Default rule for Project level non admin APIs."),
    oslo_policy.RuleDefault("project_reader_api", "role:reader and project_id:%(project_id)s",
                            "Default rule for Project level read only APIs."),
    oslo_policy.RuleDefault("service_api", "role:service",
                            "Default rule for service-to-service APIs."),
    oslo_policy.RuleDefault("project_member_or_admin",
                            "rule:project_member_api or rule:context_is_admin",
                            "Default rule for Project Member or admin APIs."),
    oslo_policy.RuleDefault("project_reader_or_admin",
                            "rule:project_reader_api or rule:context_is_admin",
                            "Default rule for Project reader or admin APIs."),
    oslo_policy.RuleDefault("service_or_admin", "rule:service_api or rule:context_is_admin",
                            "Default rule for service or admin APIs."),
]

# -- the routes' rules ----------------------------------------------------------------------
SERVERS = "os_compute_api:servers:%s"
SERVERS_INDEX = SERVERS % "index"
SERVERS_DETAIL = SERVERS % "detail"
SERVERS_INDEX_ALL = SERVERS % "index:get_all_tenants"
SERVERS_DETAIL_ALL = SERVERS % "detail:get_all_tenants"
SERVERS_SHOW = SERVERS % "show"
SERVERS_CREATE = SERVERS % "create"
#: creating a server with volumes (block_device_mapping_v2), checked besides SERVERS_CREATE
SERVERS_CREATE_ATTACH_VOLUME = SERVERS % "create:attach_volume"
SERVERS_DELETE = SERVERS % "delete"
#: blockyard's: create a server by adopting a running QEMU
SERVERS_ADOPT = "blockyard:servers:create:qmp_socket"
ATTACHMENTS = "os_compute_api:os-volumes-attachments:%s"
ATTACHMENTS_INDEX = ATTACHMENTS % "index"
ATTACHMENTS_SHOW = ATTACHMENTS % "show"
ATTACHMENTS_CREATE = ATTACHMENTS % "create"
ATTACHMENTS_DELETE = ATTACHMENTS % "delete"
ATTACHMENTS_UPDATE = ATTACHMENTS % "update"
ATTACHMENTS_SWAP = ATTACHMENTS % "swap"
EVENTS_CREATE = "os_compute_api:os-server-external-events:create"
#: the deprecated proxies of the volume API (nova/policies/volumes.py)
VOLUMES = "os_compute_api:os-volumes:%s"
VOLUMES_LIST = VOLUMES % "list"
VOLUMES_DETAIL = VOLUMES % "detail"
VOLUMES_SHOW = VOLUMES % "show"
VOLUMES_CREATE = VOLUMES % "create"
VOLUMES_DELETE = VOLUMES % "delete"
SNAPSHOTS_LIST = VOLUMES % "snapshots:list"
SNAPSHOTS_DETAIL = VOLUMES % "snapshots:detail"
SNAPSHOTS_SHOW = VOLUMES % "snapshots:show"
SNAPSHOTS_CREATE = VOLUMES % "snapshots:create"
SNAPSHOTS_DELETE = VOLUMES % "snapshots:delete"
CONSOLE_OUTPUT = "os_compute_api:os-console-output"
#: extra specs in flavor bodies from 2.61 (checked without failing: left out if refused)
FLAVOR_EXTRA_SPECS_INDEX = "os_compute_api:os-flavor-extra-specs:index"
#: Nova's default is the service role only; admin too here, as for the events (the noauth
#: volume service speaks as the admin)
ASSISTED_SNAPSHOTS_CREATE = "os_compute_api:os-assisted-volume-snapshots:create"


def _rule(name: str, check: str, description: str, method: str,
          path: str) -> oslo_policy.DocumentedRuleDefault:
    return oslo_policy.DocumentedRuleDefault(
        name=name, check_str=check, description=description,
        operations=[{"method": method, "path": path}], scope_types=["project"])


ROUTES = [
    _rule(SERVERS_INDEX, PROJECT_READER_OR_ADMIN, "List all servers", "GET", "/servers"),
    _rule(SERVERS_DETAIL, PROJECT_READER_OR_ADMIN,
          "List all servers with detailed information", "GET", "/servers/detail"),
    _rule(SERVERS_INDEX_ALL, ADMIN, "List all servers for all projects", "GET", "/servers"),
    _rule(SERVERS_DETAIL_ALL, ADMIN, "List all servers with detailed information for all "
          "projects", "GET", "/servers/detail"),
    _rule(SERVERS_SHOW, PROJECT_READER_OR_ADMIN, "Show a server", "GET",
          "/servers/{server_id}"),
    _rule(SERVERS_CREATE, PROJECT_MEMBER_OR_ADMIN, "Create a server", "POST", "/servers"),
    _rule(SERVERS_CREATE_ATTACH_VOLUME, PROJECT_MEMBER_OR_ADMIN,
          "Create a server with the requested volume attached to it", "POST", "/servers"),
    _rule(SERVERS_ADOPT, ADMIN, "Create a server by adopting a running QEMU "
          "(blockyard:qmp_socket): the agent connects to any Unix socket named",
          "POST", "/servers"),
    _rule(SERVERS_DELETE, PROJECT_MEMBER_OR_ADMIN, "Delete a server", "DELETE",
          "/servers/{server_id}"),
    _rule(ATTACHMENTS_INDEX, PROJECT_READER_OR_ADMIN,
          "List volume attachments for an instance", "GET",
          "/servers/{server_id}/os-volume_attachments"),
    _rule(ATTACHMENTS_CREATE, PROJECT_MEMBER_OR_ADMIN, "Attach a volume to an instance",
          "POST", "/servers/{server_id}/os-volume_attachments"),
    _rule(ATTACHMENTS_SHOW, PROJECT_READER_OR_ADMIN, "Show details of a volume attachment",
          "GET", "/servers/{server_id}/os-volume_attachments/{volume_id}"),
    _rule(ATTACHMENTS_UPDATE, PROJECT_MEMBER_OR_ADMIN, "Update a volume attachment "
          "(delete_on_termination, 2.85); a request that also changes the volumeId is "
          "checked against the swap rule only",
          "PUT", "/servers/{server_id}/os-volume_attachments/{volume_id}"),
    # Nova's swap rule is meant for the volume service (service role) and admins; its
    # target is empty: the caller need not be of the server's project
    _rule(ATTACHMENTS_SWAP, SERVICE_OR_ADMIN, "Update a volume attachment with a different "
          "volumeId (swap the volume under a running guest)",
          "PUT", "/servers/{server_id}/os-volume_attachments/{volume_id}"),
    _rule(ATTACHMENTS_DELETE, PROJECT_MEMBER_OR_ADMIN, "Detach a volume from an instance",
          "DELETE", "/servers/{server_id}/os-volume_attachments/{volume_id}"),
    _rule(EVENTS_CREATE, SERVICE_OR_ADMIN, "Create one or more external events", "POST",
          "/os-server-external-events"),
    _rule(VOLUMES_LIST, PROJECT_READER_OR_ADMIN, "List volumes (a proxy of the volume "
          "service, deprecated)", "GET", "/os-volumes"),
    _rule(VOLUMES_CREATE, PROJECT_MEMBER_OR_ADMIN, "Create volume (a proxy of the volume "
          "service, deprecated)", "POST", "/os-volumes"),
    _rule(VOLUMES_DETAIL, PROJECT_READER_OR_ADMIN, "List volumes detail (a proxy of the "
          "volume service, deprecated)", "GET", "/os-volumes/detail"),
    _rule(VOLUMES_SHOW, PROJECT_READER_OR_ADMIN, "Show volume (a proxy of the volume "
          "service, deprecated)", "GET", "/os-volumes/{volume_id}"),
    _rule(VOLUMES_DELETE, PROJECT_MEMBER_OR_ADMIN, "Delete volume (a proxy of the volume "
          "service, deprecated)", "DELETE", "/os-volumes/{volume_id}"),
    _rule(SNAPSHOTS_LIST, PROJECT_READER_OR_ADMIN, "List snapshots (a proxy of the volume "
          "service, deprecated)", "GET", "/os-snapshots"),
    _rule(SNAPSHOTS_CREATE, PROJECT_MEMBER_OR_ADMIN, "Create snapshots (a proxy of the "
          "volume service, deprecated)", "POST", "/os-snapshots"),
    _rule(SNAPSHOTS_DETAIL, PROJECT_READER_OR_ADMIN, "List snapshots details (a proxy of "
          "the volume service, deprecated)", "GET", "/os-snapshots/detail"),
    _rule(SNAPSHOTS_SHOW, PROJECT_READER_OR_ADMIN, "Show snapshot (a proxy of the volume "
          "service, deprecated)", "GET", "/os-snapshots/{snapshot_id}"),
    _rule(SNAPSHOTS_DELETE, PROJECT_MEMBER_OR_ADMIN, "Delete snapshot (a proxy of the "
          "volume service, deprecated)", "DELETE", "/os-snapshots/{snapshot_id}"),
    _rule(CONSOLE_OUTPUT, PROJECT_MEMBER_OR_ADMIN, "Show console output for a server",
          "POST", "/servers/{server_id}/action (os-getConsoleOutput)"),
    oslo_policy.DocumentedRuleDefault(
        name=FLAVOR_EXTRA_SPECS_INDEX, check_str=PROJECT_READER_OR_ADMIN,
        description="List extra specs for a flavor (in flavor bodies from 2.61)",
        operations=[{"method": "GET", "path": "/flavors/{flavor_id}/os-extra_specs"},
                    {"method": "GET", "path": "/flavors/detail"},
                    {"method": "GET", "path": "/flavors/{flavor_id}"}],
        scope_types=["project"]),
    _rule(ASSISTED_SNAPSHOTS_CREATE, SERVICE_OR_ADMIN, "Create an assisted volume snapshot",
          "POST", "/os-assisted-volume-snapshots"),
]

DEFAULTS: list[oslo_policy.RuleDefault] = [*BASE, *ROUTES]


class ComputePolicy(Policy):
    """Nova's rules for the agent, with an operator's overrides (`blockyard.policy.Policy`),
    plus the two questions the agent asks of them: is this caller an admin, and does a
    server of that project exist for them."""

    def __init__(self, policy_file: str | Path | None = None) -> None:
        super().__init__(DEFAULTS, policy_file)

    def is_admin(self, identity: Identity) -> bool:
        return self.check(identity, CONTEXT_IS_ADMIN, {})

    def sees(self, identity: Identity, project_id: str) -> bool:
        """Whether a server of `project_id` exists for `identity` (else it is 404): its own
        project's, or any to an admin."""
        return project_id == identity.project_id or self.is_admin(identity)
