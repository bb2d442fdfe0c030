"""Skill manifests for ``/api/cluster/register`` (``{"skillId": ...}``) and ``/skills``.

The skills are the package's own (:mod:`openclaw_orchestrator.skills`): static files, the
same on every replica, so registering one records nothing. Registration is idempotent (201
with the manifest each time) and the listing shows every skill the orchestrator ships:
nothing to share between replicas, nothing that can disagree after a restart.
"""

from __future__ import annotations

from starlette.requests import Request

from ...mcp_server.http import MCP_PATH
from ...models import SkillList, SkillManifest
from ...skills import SKILL_IDS, load_skill

__all__ = ["mcp_url", "skill_list", "skill_manifest"]


def mcp_url(request: Request) -> str:
    """This orchestrator's ``/mcp`` as the caller reached it (its ``Host`` and any root
    path): the address the caller can hand to a gateway on the same network."""
    return str(request.base_url).rstrip("/") + MCP_PATH


def skill_manifest(skill_id: str, url: str) -> SkillManifest:
    """Skill ``skill_id``'s manifest with ``url`` as its MCP endpoint;
    :class:`~openclaw_orchestrator.errors.NotFoundError` (field ``skillId``) when unknown."""
    skill = load_skill(skill_id)
    return SkillManifest(
        name=skill.name,
        description=skill.description,
        mcp_url=url,
        cluster=skill.cluster,
        tags=skill.tags,
        embedding_hint=skill.embedding_hint,
        metadata=dict(skill.metadata),
        skill_md=skill.text,
    )


def skill_list(url: str) -> SkillList:
    """Every shipped skill's manifest."""
    return SkillList(skills=[skill_manifest(skill_id, url) for skill_id in SKILL_IDS])
