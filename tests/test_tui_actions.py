"""Every key binding names an action that exists, with arguments its method accepts.

Textual takes a binding's action as a string (`"job('cancel')"`) and looks the method up only
when the key is pressed, so a typo is silent until then. The verbs the panes pass on are typed
(`JobVerb`, `ServerVerb`, `ImageVerb`, `Choice`): this check holds the strings to those types.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from textual.actions import parse
from textual.binding import Binding
from textual.dom import DOMNode

from mobilesd_tui.app import MobileSDApp
from mobilesd_tui.screens.civitai_import import CivitaiImport, MissingModels
from mobilesd_tui.screens.confirm import Confirm
from mobilesd_tui.screens.image_view import ImageView
from mobilesd_tui.screens.lora_picker import LoraPicker
from mobilesd_tui.screens.server_form import ServerForm
from mobilesd_tui.widgets.gallery import GalleryPane
from mobilesd_tui.widgets.generator import GeneratorPane
from mobilesd_tui.widgets.queue import QueuePane
from mobilesd_tui.widgets.servers import ServersPane

OWNERS: list[type[DOMNode]] = [
    MobileSDApp,
    GeneratorPane,
    QueuePane,
    GalleryPane,
    ServersPane,
    CivitaiImport,
    MissingModels,
    Confirm,
    ImageView,
    LoraPicker,
    ServerForm,
]


def accepts(annotation: Any, value: object) -> bool:
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a union or the like: not narrower than what Textual parsed


@pytest.mark.parametrize("owner", OWNERS, ids=lambda cls: cls.__name__)
def test_every_binding_names_a_method_that_takes_its_arguments(owner: type[DOMNode]) -> None:
    bindings = [b for b in owner.BINDINGS if isinstance(b, Binding)]
    assert bindings
    for binding in bindings:
        namespace, name, args = parse(binding.action)
        target = MobileSDApp if namespace == "app" else owner
        method = getattr(target, f"action_{name}", None)
        assert callable(method), f"{owner.__name__}: {binding.key} → {binding.action}: no method"
        hints = typing.get_type_hints(method)
        hints.pop("return", None)
        assert len(hints) == len(args), f"{binding.action}: takes {list(hints)}"
        for annotation, value in zip(hints.values(), args, strict=True):
            assert accepts(annotation, value), f"{binding.action}: {value!r} is not {annotation}"


def test_a_misspelt_verb_is_caught() -> None:
    """The check above is not vacuous: a verb outside `JobVerb` fails it."""
    hints = typing.get_type_hints(QueuePane.action_job)
    assert accepts(hints["action"], "cancel")
    assert not accepts(hints["action"], "cancle")
