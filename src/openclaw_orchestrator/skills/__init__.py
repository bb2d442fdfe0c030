"""The OpenClaw skills this package ships: ``skills/<id>/SKILL.md``, package data.

A skill is OpenClaw's format (``docs/tools/creating-skills.md`` in the ``openclaw`` npm
package): YAML frontmatter with a lowercase ``name``, a one-line ``description`` and a
``metadata`` object, then markdown instructions for the agent. The files are static, so
every replica of the orchestrator serves the same ones; they are read once and cached.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from ..errors import NotFoundError

__all__ = ["SKILL_IDS", "Skill", "load_skill", "parse_skill", "skill_dir"]

SKILL_IDS = ("orchestrator",)
"""Every skill the package ships, by id (its folder and its ``name``)."""
SKILL_FILE = "SKILL.md"
_FRONTMATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Skill:
    """One skill: its frontmatter fields and the whole ``SKILL.md`` text."""

    name: str
    description: str
    metadata: Mapping[str, Any]
    text: str

    @property
    def tags(self) -> list[str]:
        """The seed's tags (``metadata.tags``)."""
        return [str(tag) for tag in self.metadata.get("tags", [])]

    @property
    def cluster(self) -> str | None:
        """The seed's skill cluster (``metadata.cluster``), e.g. ``distributed-comms``."""
        value = self.metadata.get("cluster")
        return None if value is None else str(value)

    @property
    def embedding_hint(self) -> str | None:
        """Words a skill index embeds to find this skill (``metadata.embedding_hint``)."""
        value = self.metadata.get("embedding_hint")
        return None if value is None else str(value)


def parse_skill(text: str) -> Skill:
    """``text`` (a SKILL.md) as a :class:`Skill`; ValueError when its frontmatter is not
    a YAML mapping with a string ``name`` and ``description`` and a mapping ``metadata``."""
    match = _FRONTMATTER.match(text)
    if match is None:
        raise ValueError("SKILL.md must start with a '---' YAML frontmatter block")
    front = yaml.safe_load(match.group(1))
    if not isinstance(front, dict):
        raise ValueError("SKILL.md frontmatter must be a YAML mapping")
    name, description = front.get("name"), front.get("description")
    metadata = front.get("metadata", {})
    if not isinstance(name, str) or not isinstance(description, str):
        raise ValueError("SKILL.md frontmatter needs a string name and description")
    if not isinstance(metadata, dict):
        raise ValueError("SKILL.md frontmatter metadata must be a mapping")
    return Skill(name=name, description=description, metadata=metadata, text=text)


def skill_dir(skill_id: str) -> Traversable:
    """The folder of skill ``skill_id`` inside the package (what an install copies);
    :class:`NotFoundError` naming ``skillId`` for an id the package does not ship."""
    if skill_id not in SKILL_IDS:
        known = ", ".join(SKILL_IDS)
        raise NotFoundError(f"no skill {skill_id!r}; known: {known}", field="skillId")
    return resources.files(__name__) / skill_id


@cache
def load_skill(skill_id: str) -> Skill:
    """Skill ``skill_id`` as shipped (read once); :class:`NotFoundError` when unknown."""
    return parse_skill(skill_dir(skill_id).joinpath(SKILL_FILE).read_text(encoding="utf-8"))
