"""Generator tab: the form that becomes `generation_params`, and its field errors.

The TUI does not validate by itself: it sends what was typed (numbers as numbers when they
parse, else the text as typed) and shows the API's 422 `details` next to each field, so the one
schema in the core is the only judge.
"""

from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import var
from textual.widget import Widget
from textual.widgets import (
    Button,
    Checkbox,
    Collapsible,
    Input,
    Label,
    Select,
    Static,
    TextArea,
)

from ..formdata import FormValues, Loaded, from_form, number, to_form

ANY = "*"  # the target Select's value for "any server"
CURRENT = "*"  # the checkpoint Select's value for "keep the server's current"
AUTO = "*"  # the scheduler Select's value for "the sampler's default"
SIZE_PRESETS = (
    ("512 × 512", "512x512"),
    ("768 × 768", "768x768"),
    ("1024 × 1024", "1024x1024"),
    ("832 × 1216 portrait", "832x1216"),
    ("1216 × 832 landscape", "1216x832"),
    ("896 × 1152 portrait", "896x1152"),
    ("1152 × 896 landscape", "1152x896"),
    ("512 × 768 portrait", "512x768"),
    ("768 × 512 landscape", "768x512"),
    ("custom", "custom"),
)
DEFAULT_SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM"]
# Error paths into list fields (`styles[0]`) land on the list's field, the index in the text.
LIST_ERRORS = ("loras", "styles", "modules")
ERROR_ID_RE = re.compile(r"err-[A-Za-z0-9_-]+")  # paths like `adetailer[0].model` have no line


# Fields too narrow for their own message: it goes on the line under their row, named.
# The Inputs, by id (= their key in formdata's FormValues).
INPUTS = (
    "width",
    "height",
    "steps",
    "cfg_scale",
    "seed",
    "n_iter",
    "batch_size",
    "subseed",
    "subseed_strength",
    "clip_skip",
    "distilled_cfg_scale",
    "modules",
    "refiner_checkpoint",
    "refiner_switch_at",
    "styles",
    "hr_upscaler",
    "hr_scale",
    "hr_steps",
    "hr_denoising_strength",
    "ad_model",
    "ad_prompt",
    "ad_confidence",
    "ad_denoising_strength",
)

ROW_ERRORS = {
    "width": "size",
    "height": "size",
    "steps": "size",
    "cfg_scale": "size",
    "seed": "seed",
    "n_iter": "seed",
}


@dataclass
class SubmitRequested(Message):
    """Queue the form: as one job, as one job per checkpoint, or as an edit of `edit_of`."""

    params: dict[str, Any]
    target: str | None
    _: KW_ONLY
    edit_of: str | None = None
    every_checkpoint: bool = False


@dataclass
class ModelsWanted(Message):
    """The target changed: the app fetches that server's lists (checkpoints, LoRAs, ...)."""

    target: str | None


@dataclass
class LoraPickRequested(Message):
    """The LoRA button or ctrl+l: the app opens the picker with the target's LoRAs."""


class Field(Vertical):
    """A label, the control, and the line where the API's complaint about it appears."""

    def __init__(
        self, label: str, control: Widget, name: str, *, classes: str = "", id: str | None = None
    ) -> None:
        super().__init__(classes=f"field {classes}".strip(), id=id)
        self.label = label
        self.control = control
        self.field_name = name
        # Narrow fields side by side share one error line under their row (ROW_ERRORS).
        self.inline_error = name not in ROW_ERRORS

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="field-label")
        yield self.control
        if self.inline_error:
            yield Static("", classes="field-error", id=error_id(self.field_name))


def error_id(name: str) -> str:
    """The id of a field's error line (`hires.scale` -> `err-hires-scale`: ids have no dots)."""
    return "err-" + name.replace(".", "-")


class LoraRow(Horizontal):
    def __init__(self, name: str, weight: Any, index: int) -> None:
        super().__init__(classes="lora-row")
        self.lora_name = name
        # The weight as typed, kept here too: a row mounted a moment ago has no Input yet.
        self.weight_text = str(weight)
        self.index = index
        # Set when the row goes: removal finishes later, and until then it is still queried.
        self.removed = False

    def compose(self) -> ComposeResult:
        yield Label(Text(self.lora_name), classes="lora-name")
        yield Input(self.weight_text, compact=True, classes="lora-weight", tooltip="weight -5..5")
        yield Button("✕", compact=True, classes="lora-remove", tooltip="remove this LoRA")

    def value(self) -> tuple[str, str]:
        """The name and the weight as typed."""
        return (self.lora_name, self.weight_text)

    @on(Input.Changed, ".lora-weight")
    def _weight_typed(self, event: Input.Changed) -> None:
        self.weight_text = event.value

    @on(Button.Pressed, ".lora-remove")
    def _remove(self) -> None:
        self.removed = True
        self.remove()


class GeneratorPane(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "submit", "Add to queue", id="generator.submit"),
        Binding("ctrl+l", "add_lora", "Add LoRA", id="generator.add_lora"),
        Binding("ctrl+r", "random_seed", "Random seed", id="generator.random_seed"),
        Binding("f5", "app.civitai_import", "Civitai link", id="generator.civitai"),
    ]

    # The pending job the form edits (saving PATCHes it): the button says so, and the form
    # wears the `editing` class.
    editing: var[str | None] = var(None, init=False, toggle_class="editing")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models: dict[str, Any] = {}
        self.last_seed: int | None = None
        # Each Select's options as we set them (Select keeps its own list private).
        self._options: dict[str, list[tuple[str, Any]]] = {
            "target": [("any server", ANY)],
            "checkpoint_name": [("server's current", CURRENT)],
            "sampler_name": [(s, s) for s in DEFAULT_SAMPLERS],
            "scheduler": [("automatic", AUTO)],
        }
        self._loaded = Loaded()

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="generator-form"):
            yield Field(
                "Prompt",
                TextArea(
                    id="prompt", soft_wrap=True, show_line_numbers=False, tab_behavior="focus"
                ),
                "prompt",
            )
            yield Field(
                "Negative prompt",
                TextArea(
                    id="negative_prompt",
                    soft_wrap=True,
                    show_line_numbers=False,
                    tab_behavior="focus",
                ),
                "negative_prompt",
            )
            with Horizontal(classes="row"):
                yield Field(
                    "Server",
                    Select(
                        [("any server", ANY)],
                        value=ANY,
                        allow_blank=False,
                        compact=True,
                        id="target",
                    ),
                    "target_server_alias",
                    id="f-target",
                )
                yield Field(
                    "Checkpoint (type to search)",
                    Select(
                        [("server's current", CURRENT)],
                        value=CURRENT,
                        allow_blank=False,
                        compact=True,
                        id="checkpoint_name",
                    ),
                    "checkpoint_name",
                    id="f-checkpoint",
                )
            yield Checkbox(
                "Every checkpoint (one job per checkpoint of the server, as one batch)",
                compact=True,
                id="every-checkpoint",
            )
            with Horizontal(classes="row", id="lora-line"):
                yield Label("LoRAs", classes="field-label")
                yield Button("+ LoRA", compact=True, id="add-lora", tooltip="pick a LoRA (ctrl+l)")
                yield Vertical(id="loras")
            yield Static("", classes="field-error", id="err-loras")
            with Horizontal(classes="row"):
                yield Field(
                    "Size",
                    Select(
                        SIZE_PRESETS, value="512x512", allow_blank=False, compact=True, id="size"
                    ),
                    "size",
                    id="f-size",
                )
                yield Field("Width", Input("512", compact=True, id="width"), "width", classes="num")
                yield Field(
                    "Height", Input("512", compact=True, id="height"), "height", classes="num"
                )
                yield Field("Steps", Input("20", compact=True, id="steps"), "steps", classes="num")
                yield Field(
                    "CFG", Input("7", compact=True, id="cfg_scale"), "cfg_scale", classes="num"
                )
            yield Static("", classes="field-error", id="err-row-size")
            with Horizontal(classes="row"):
                yield Field(
                    "Sampler",
                    Select(
                        [(s, s) for s in DEFAULT_SAMPLERS],
                        value="Euler",
                        allow_blank=False,
                        compact=True,
                        id="sampler_name",
                    ),
                    "sampler_name",
                    id="f-sampler",
                )
                yield Field(
                    "Scheduler",
                    Select(
                        [("automatic", AUTO)],
                        value=AUTO,
                        allow_blank=False,
                        compact=True,
                        id="scheduler",
                    ),
                    "scheduler",
                    id="f-scheduler",
                )
            with Horizontal(classes="row"):
                yield Field(
                    "Seed (-1 random)", Input("-1", compact=True, id="seed"), "seed", id="f-seed"
                )
                yield Button("Random", compact=True, id="seed-random", tooltip="seed -1 (ctrl+r)")
                yield Button("Reuse last", compact=True, id="seed-last", tooltip="last job's seed")
                yield Field(
                    "Images", Input("1", compact=True, id="n_iter"), "n_iter", classes="num"
                )
            yield Static("", classes="field-error", id="err-row-seed")
            # Folded: the first screen stays the everyday form; errors unfold their section.
            with (
                Collapsible(title="Batch size, variation seed", id="sec-batch"),
                Horizontal(classes="row"),
            ):
                yield Field("Batch size", Input("1", compact=True, id="batch_size"), "batch_size")
                yield Field(
                    "Variation seed",
                    Input("-1", compact=True, id="subseed"),
                    "subseed",
                )
                yield Field(
                    "Variation 0-1",
                    Input("0", compact=True, id="subseed_strength"),
                    "subseed_strength",
                )
            with Collapsible(title="Hires fix", id="sec-hires"):
                yield Checkbox("Hires fix (upscale, then a second pass)", compact=True, id="hires")
                yield Static("", classes="field-error", id="err-hires")
                with Horizontal(classes="row"):
                    yield Field(
                        "Upscaler",
                        Input("Latent", compact=True, id="hr_upscaler"),
                        "hires.upscaler",
                    )
                    yield Field("Scale", Input("2", compact=True, id="hr_scale"), "hires.scale")
                    yield Field(
                        "Steps (0 same)", Input("0", compact=True, id="hr_steps"), "hires.steps"
                    )
                    yield Field(
                        "Denoising",
                        Input("0.7", compact=True, id="hr_denoising_strength"),
                        "hires.denoising_strength",
                    )
            with Collapsible(
                title="Model: clip skip, distilled CFG, VAE, refiner, styles", id="sec-model"
            ):
                with Horizontal(classes="row"):
                    yield Field(
                        "Clip skip (blank: server's)",
                        Input("", compact=True, id="clip_skip"),
                        "clip_skip",
                    )
                    yield Field(
                        "Distilled CFG (Flux)",
                        Input("", compact=True, id="distilled_cfg_scale"),
                        "distilled_cfg_scale",
                    )
                yield Field(
                    "VAE / text encoders (file names, comma-separated)",
                    Input("", compact=True, id="modules"),
                    "modules",
                )
                with Horizontal(classes="row"):
                    yield Field(
                        "Refiner checkpoint",
                        Input("", compact=True, id="refiner_checkpoint"),
                        "refiner_checkpoint",
                    )
                    yield Field(
                        "Switch at 0-1",
                        Input("", compact=True, id="refiner_switch_at"),
                        "refiner_switch_at",
                    )
                yield Field(
                    "Styles (comma-separated)", Input("", compact=True, id="styles"), "styles"
                )
            with Collapsible(title="ADetailer: fix faces and hands", id="sec-adetailer"):
                yield Static("", classes="field-error", id="err-adetailer")
                with Horizontal(classes="row"):
                    yield Field(
                        "Detection model (blank: off)",
                        Input("", compact=True, id="ad_model", placeholder="face_yolov8n.pt"),
                        "adetailer.model",
                    )
                    yield Field(
                        "Confidence 0-1",
                        Input("0.3", compact=True, id="ad_confidence"),
                        "adetailer.confidence",
                    )
                    yield Field(
                        "Denoising",
                        Input("0.4", compact=True, id="ad_denoising_strength"),
                        "adetailer.denoising_strength",
                    )
                yield Field(
                    "Its prompt (blank: the job's)",
                    Input("", compact=True, id="ad_prompt"),
                    "adetailer.prompt",
                )
            # What the form has no widget for (ADetailer, ControlNet, extra): sent unchanged.
            with Horizontal(id="more-line"):
                yield Static("", id="more-settings")
                yield Button(
                    "Drop them",
                    compact=True,
                    id="drop-more",
                    tooltip="send the next job without these settings",
                )
        # Outside the scrolling form: on a 24-line terminal the button stays in view.
        yield Static("", classes="field-error", id="err-general")
        with Horizontal(id="submit-line"):
            yield Button(
                "Add to queue", compact=True, variant="primary", id="submit", tooltip="ctrl+s"
            )
            yield Button(
                "Stop editing", compact=True, id="stop-editing", tooltip="back to a new job"
            )
            yield Static("", id="submit-status")

    # -- the form as data ---------------------------------------------------------------------

    def values(self) -> FormValues:
        """Every widget's value (texts as typed; see formdata)."""
        checkpoint = self.query_one("#checkpoint_name", Select).value
        scheduler = self.query_one("#scheduler", Select).value
        values: FormValues = {
            "prompt": self.query_one("#prompt", TextArea).text,
            "negative_prompt": self.query_one("#negative_prompt", TextArea).text,
            "checkpoint_name": None if checkpoint == CURRENT else checkpoint,
            "sampler_name": self.query_one("#sampler_name", Select).value,
            "scheduler": None if scheduler == AUTO else scheduler,
            "loras": [row.value() for row in self._lora_rows()],
            "hires": self.query_one("#hires", Checkbox).value,
        }
        for key in INPUTS:
            values[key] = self.query_one(f"#{key}", Input).value
        return values

    def form(self) -> dict[str, Any]:
        """Everything typed, as remembered between runs (raw text for numbers)."""
        values = self.values()
        target = self.query_one("#target", Select).value
        return {
            **values,
            "target": None if target == ANY else target,
            "loras": [{"name": n, "weight": number(w, integer=False)} for n, w in values["loras"]],
        }

    def params(self) -> dict[str, Any]:
        """The form as `generation_params`: what was loaded and not changed, exactly so."""
        return from_form(self.values(), self._loaded)

    def fill(self, values: dict[str, Any]) -> None:
        """Put remembered settings (prefs: texts, some keys) into the form; unknown keys are
        ignored, and nothing is carried: the form is what it shows."""
        self._apply(values)
        self._set_loaded(Loaded())

    def load(self, params: dict[str, Any], *, target: str | None = None) -> None:
        """Show a job's `generation_params` (every field; missing ones take their defaults) and
        carry what the form has no widget for, so submitting it unchanged is the same job."""
        self._apply({**to_form(params), "target": target})
        self._set_loaded(Loaded(params=dict(params), values=self.values()))

    def _set_loaded(self, loaded: Loaded) -> None:
        self._loaded = loaded
        more = loaded.more()
        self.query_one("#more-settings", Static).update(
            Text(f"+ {len(more)} more settings, sent unchanged: {', '.join(more)}")
        )
        self.query_one("#more-line").display = bool(more)

    @on(Button.Pressed, "#drop-more")
    def _drop_more(self) -> None:
        """Forget the carried settings; the shown fields stay as loaded (and as typed)."""
        loaded = self._loaded
        self._set_loaded(
            Loaded(
                params={k: v for k, v in loaded.params.items() if k not in loaded.carried},
                values=loaded.values,
            )
        )

    def _apply(self, values: dict[str, Any]) -> None:
        if "prompt" in values:
            self.query_one("#prompt", TextArea).text = str(values["prompt"] or "")
        if "negative_prompt" in values:
            self.query_one("#negative_prompt", TextArea).text = str(values["negative_prompt"] or "")
        for key in INPUTS:
            if values.get(key) is not None:
                self.query_one(f"#{key}", Input).value = str(values[key])
        if "target" in values:
            self._choose(self.query_one("#target", Select), values["target"] or ANY)
        if "checkpoint_name" in values:
            self._choose(
                self.query_one("#checkpoint_name", Select), values["checkpoint_name"] or CURRENT
            )
        if values.get("sampler_name"):
            self._choose(self.query_one("#sampler_name", Select), values["sampler_name"])
        if "scheduler" in values:
            self._choose(self.query_one("#scheduler", Select), values["scheduler"] or AUTO)
        if isinstance(values.get("hires"), bool):
            self.query_one("#hires", Checkbox).value = values["hires"]
        if isinstance(values.get("loras"), list):
            for row in self._lora_rows():
                row.removed = True
            self.query_one("#loras", Vertical).remove_children()
            for lora in values["loras"]:
                if isinstance(lora, dict) and lora.get("name"):  # prefs
                    self.add_lora(str(lora["name"]), lora.get("weight", 1.0))
                elif isinstance(lora, tuple | list) and len(lora) == 2:  # formdata
                    self.add_lora(str(lora[0]), lora[1])
        self._sync_size_preset()

    def _choose(self, select: Select[Any], value: Any) -> None:
        """Select `value`, adding it as an option when the list does not have it (yet)."""
        options = self._options[str(select.id)]
        if value not in [v for _, v in options]:
            self._set_options(select, [*options, (str(value), value)], value)
        else:
            select.value = value

    def _set_options(self, select: Select[Any], options: list[tuple[str, Any]], value: Any) -> None:
        """New options, keeping `value` chosen (added to the list when it is not in it)."""
        if value not in [v for _, v in options]:
            options = [*options, (str(value), value)]
        if options != self._options[str(select.id)]:
            self._options[str(select.id)] = options
            with select.prevent(Select.Changed):
                select.set_options(options)
        if select.value != value:
            select.value = value

    def _lora_rows(self) -> list[LoraRow]:
        return [row for row in self.query(LoraRow) if not row.removed]

    def add_lora(self, name: str, weight: Any = 1.0) -> None:
        box = self.query_one("#loras", Vertical)
        if any(row.lora_name == name for row in self._lora_rows()):
            return
        box.mount(LoraRow(name, weight, len(box.children)))

    # -- server lists -------------------------------------------------------------------------

    def set_servers(self, aliases: list[str]) -> None:
        select = self.query_one("#target", Select)
        options = [("any server", ANY), *[(alias, alias) for alias in aliases]]
        self._set_options(select, options, select.value)

    def set_models(self, models: dict[str, Any]) -> None:
        """Fill the pickers from a server's lists, keeping what is chosen."""
        self.models = models
        checkpoint = self.query_one("#checkpoint_name", Select)
        titles = [c["title"] for c in models.get("checkpoints", []) if c.get("title")]
        options = [("server's current", CURRENT), *[(t, t) for t in titles]]
        self._set_options(checkpoint, options, checkpoint.value)
        sampler = self.query_one("#sampler_name", Select)
        names = models.get("samplers") or DEFAULT_SAMPLERS
        self._set_options(sampler, [(s, s) for s in names], sampler.value)
        scheduler = self.query_one("#scheduler", Select)
        names = models.get("schedulers") or []
        self._set_options(
            scheduler, [("automatic", AUTO), *[(s, s) for s in names]], scheduler.value
        )

    # -- errors -------------------------------------------------------------------------------

    def clear_errors(self) -> None:
        for widget in self.query(".field-error").results(Static):
            widget.update("")
            widget.remove_class("shown")
        for field in self.query(Field):
            field.remove_class("invalid")

    def show_errors(self, problems: list[tuple[str, str]], fallback: str) -> None:
        """Each problem next to its field; ones without a field go above the button."""
        self.clear_errors()
        general: list[str] = []
        first: Widget | None = None
        fields = {field.field_name: field for field in self.query(Field)}
        rows: dict[str, list[str]] = {}
        for path, message in problems:
            name = path.removeprefix("generation_params.")
            # The form shows the first ADetailer unit: its errors go to its fields.
            name = name.replace("adetailer[0].", "adetailer.", 1)
            base = name.split("[", 1)[0]
            if base in LIST_ERRORS and base != name:
                message = f"{name}: {message}"
                name = base
            field = fields.get(name)
            if name in ROW_ERRORS and field is not None:
                row = ROW_ERRORS[name]
                rows.setdefault(row, []).append(f"{field.label}: {message}")
                target = self.query_one(f"#err-row-{row}", Static)
                message = " · ".join(rows[row])
            else:
                eid = error_id(name)
                matches = self.query(f"#{eid}") if ERROR_ID_RE.fullmatch(eid) else None
                if not matches:
                    general.append(f"{path}: {message}")
                    continue
                target = matches.first(Static)
            target.update(Text(message))  # the core's words may quote user text: no markup
            target.add_class("shown")
            for section in target.ancestors_with_self:
                if isinstance(section, Collapsible):
                    section.collapsed = False
            if field is not None:
                field.add_class("invalid")
                first = first or field.control
        if general or not problems:
            error = self.query_one("#err-general", Static)
            error.update(Text("\n".join(general) or fallback))
            error.add_class("shown")
        if first is not None:
            first.focus()
            self.query_one("#generator-form", VerticalScroll).scroll_to_widget(first)

    def show_queued(self, job: dict[str, Any]) -> None:
        position = job.get("position")
        where = f", #{position + 1} in line" if isinstance(position, int) else ""
        self.query_one("#submit-status", Static).update(
            f"[green]queued[/] {job['mobilesd_job_id'][-8:]}{where} (F2 shows the queue)"
        )

    # -- events -------------------------------------------------------------------------------

    def action_submit(self) -> None:
        target = self.query_one("#target", Select).value
        every = self.query_one("#every-checkpoint", Checkbox).value and self.editing is None
        self.post_message(
            SubmitRequested(
                self.params(),
                None if target == ANY else str(target),
                edit_of=self.editing,
                every_checkpoint=every,
            )
        )

    # -- editing a pending job ------------------------------------------------------------------

    def start_editing(self, job: dict[str, Any]) -> None:
        """Load a pending job into the form; Save PATCHes its params with the form's (what the
        form does not show is carried, so it stays as it is)."""
        job_id: str = job["mobilesd_job_id"]
        self.editing = job_id
        self.load(job.get("generation_params") or {}, target=job.get("target_server_alias"))
        self.clear_errors()
        self.query_one("#every-checkpoint", Checkbox).value = False
        self.query_one("#submit-status", Static).update(
            f"[yellow]editing[/] pending job {job_id[-8:]}"
        )

    def stop_editing(self, status: str = "") -> None:
        self.editing = None
        self.query_one("#submit-status", Static).update(status)

    def watch_editing(self, editing: str | None) -> None:
        self.query_one("#submit", Button).label = (
            "Add to queue" if editing is None else "Save changes"
        )

    @on(Button.Pressed, "#stop-editing")
    def _stop_editing_pressed(self) -> None:
        self.stop_editing()

    def show_batch(self, answer: dict[str, Any]) -> None:
        count = len(answer.get("mobilesd_job_ids") or [])
        self.query_one("#submit-status", Static).update(
            f"[green]queued {count} jobs[/] as batch {str(answer.get('batch_id'))[-4:]} "
            "(F2 shows the queue)"
        )

    def action_add_lora(self) -> None:
        self.post_message(LoraPickRequested())

    def action_random_seed(self) -> None:
        self.query_one("#seed", Input).value = "-1"

    @on(Button.Pressed, "#submit")
    def _submit_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#add-lora")
    def _lora_pressed(self) -> None:
        self.action_add_lora()

    @on(Button.Pressed, "#seed-random")
    def _random_pressed(self) -> None:
        self.action_random_seed()

    @on(Button.Pressed, "#seed-last")
    def _last_pressed(self) -> None:
        if self.last_seed is None:
            self.notify("No finished job with a seed yet.", severity="warning")
            return
        self.query_one("#seed", Input).value = str(self.last_seed)

    @on(Select.Changed, "#target")
    def _target_changed(self, event: Select.Changed) -> None:
        self.post_message(ModelsWanted(None if event.value == ANY else str(event.value)))

    @on(Select.Changed, "#size")
    def _preset_changed(self, event: Select.Changed) -> None:
        if event.value == "custom":
            return
        width, height = str(event.value).split("x")
        self.query_one("#width", Input).value = width
        self.query_one("#height", Input).value = height

    @on(Input.Changed, "#width, #height")
    def _size_typed(self) -> None:
        self._sync_size_preset()

    def _sync_size_preset(self) -> None:
        width = self.query_one("#width", Input).value.strip()
        height = self.query_one("#height", Input).value.strip()
        key = f"{width}x{height}"
        select = self.query_one("#size", Select)
        value = key if key in [v for _, v in SIZE_PRESETS] else "custom"
        if select.value != value:
            with select.prevent(Select.Changed):
                select.value = value
