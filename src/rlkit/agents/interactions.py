"""Interactions: a simulated user who answers each model turn (verl's ``BaseInteraction`` shape).

After a model turn with no tool call, the ``tool`` loop asks the row's interaction for the next
user message: ``generate_response`` returns (done, message, turn score, extra). The turn score is
a turn reward (see ``rollout.multi_turn.turn_reward``). Interactions are listed in a YAML file in
verl's (<= 0.7) ``interaction_config_path`` layout::

    interaction:
      - name: gsm8k
        class_name: rlkit.agents.interactions.Gsm8kInteraction   # or verl's own class path
        config: {}

and each row picks one with ``extra_info.interaction_kwargs.name`` (its other keys go to
``start_interaction``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

import yaml

from rlkit.agents.loading import load_object
from rlkit.errors import UserError

# verl's example classes -> rlkit's equivalents, so a verl interaction file loads unchanged.
VERL_CLASSES = {
    "verl.interactions.gsm8k_interaction.Gsm8kInteraction": "rlkit.agents.interactions:Gsm8kInteraction",
}


class Interaction(Protocol):
    """What the loop needs from a simulated user (verl's ``BaseInteraction`` methods)."""

    async def start_interaction(self, instance_id: str, **kwargs: Any) -> None: ...

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]: ...

    async def finalize_interaction(self, instance_id: str) -> None: ...


class Gsm8kInteraction:
    """GSM8K-style "try again": a turn scores 1 and ends the dialogue when its last number is the
    answer (``ground_truth`` in ``interaction_kwargs``); otherwise the user asks for another try."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.retry_message = str(self.config.get("retry_message", "Your answer is wrong. Please try again."))
        self._answers: dict[str, str] = {}

    async def start_interaction(self, instance_id: str, ground_truth: Any = None, **kwargs: Any) -> None:
        self._answers[instance_id] = str(ground_truth).strip()

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        reply = next(
            (str(m.get("content") or "") for m in reversed(messages) if m["role"] == "assistant"), ""
        )
        numbers = re.findall(r"-?\d+(?:\.\d+)?", reply.replace(",", ""))
        if numbers and numbers[-1] == self._answers.get(instance_id):
            return True, "Your answer is correct.", 1.0, {}
        return False, self.retry_message, 0.0, {}

    async def finalize_interaction(self, instance_id: str) -> None:
        self._answers.pop(instance_id, None)


def load_interactions(path: str | None) -> dict[str, Interaction]:
    """The interactions of a verl-layout YAML file, by name (none without a file).

    Raises:
        UserError: a missing file, a bad layout, or a class that cannot be loaded.
    """
    if not path:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"rollout.multi_turn.interaction_config_path: no such file {path}", hint="give a YAML file"
        )
    doc = yaml.safe_load(file.read_text()) or {}
    entries = doc.get("interaction") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(
            f"{path} has no `interaction:` list",
            hint="write `interaction: [{name: ..., class_name: module.Class, config: {}}]`",
        )
    out: dict[str, Interaction] = {}
    for entry in entries:
        class_name = str(entry.get("class_name", ""))
        cls = load_object(VERL_CLASSES.get(class_name, class_name), key=f"{path}: class_name")
        name = str(entry.get("name") or class_name.rpartition(".")[2])
        out[name] = cls(entry.get("config") or {})
    return out
