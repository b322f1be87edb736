// MobileSD phone page. No framework, no build step. Every piece of data reaches the DOM through
// textContent, attributes or properties, never through HTML strings.

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}

// -- API --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.details = Array.isArray(error.details) ? error.details : [];
  }
}

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (path === "/api/v1/generate") options.headers["X-MobileSD-Source"] = "web";
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new ApiError(0, { error: { message: "MobileSD cannot be reached. Check the connection." } });
  }
  if (response.status === 401) showLogin();
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const enc = encodeURIComponent;

// -- small helpers ----------------------------------------------------------------------------

function timeText(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function shortModel(name) {
  if (!name) return "";
  return name.replace(/\s*\[[0-9a-f]+\]$/i, "").replace(/\.(safetensors|ckpt|pt)$/i, "");
}

function setText(id, text) {
  $(id).textContent = text || "";
}

function confirmDialog(text, okLabel = "Delete") {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-no").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// Field errors: `details[].path` like "generation_params.steps" or "loras[0].weight" land in the
// `.err[data-for]` element of the longest matching path; the rest goes to the form's own line.
function clearErrors(form, general) {
  for (const el of form.querySelectorAll(".err[data-for]")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  if (general) general.textContent = "";
}

function parentPath(path) {
  const match = path.match(/^(.*?)(\.[^.[\]]*|\[\d+\])$/);
  return match ? match[1] : "";
}

function showErrors(form, general, error, prefix = "") {
  clearErrors(form, general);
  const loose = [];
  let first = null;
  for (const detail of error.details) {
    const path = String(detail.path || "");
    const local = prefix && path.startsWith(prefix) ? path.slice(prefix.length) : path;
    let key = local;
    let target = null;
    while (key && !(target = form.querySelector(`.err[data-for="${CSS.escape(key)}"]`))) {
      key = parentPath(key);
    }
    if (!target) {
      loose.push(`${local || "request"}: ${detail.message}`);
      continue;
    }
    const label = key === local ? "" : `${local.slice(key.length).replace(/^\./, "")}: `;
    target.textContent = (target.textContent ? `${target.textContent} ` : "") + label + detail.message;
    const fold = target.closest("details");
    if (fold) fold.open = true; // a problem inside a folded section must be seen
    const control = target.closest(".field, .lora")?.querySelector("input, select, textarea");
    if (control) control.setAttribute("aria-invalid", "true");
    first = first || control || target;
  }
  if (general) {
    general.textContent = loose.length ? loose.join("\n") : error.details.length ? "" : error.message;
  }
  const focus = first || (general && general.textContent ? general : null);
  if (focus) {
    focus.scrollIntoView({ block: "center", behavior: "smooth" });
    if (focus.focus && focus !== general) focus.focus({ preventScroll: true });
  }
}

// -- state ------------------------------------------------------------------------------------

const state = {
  servers: [],
  jobs: new Map(),
  images: [],
  imagesTotal: 0,
  galleryLoaded: false,
  galleryJobs: null, // "<first id>..<last id>" while showing one batch's images
  galleryLoading: false,
  loras: [],
  modelsFor: null,
  models: null, // the lists of `modelsFor`: "every checkpoint" sweeps its checkpoints
  editing: null,
  editingJob: null, // the pending job the generator form edits (saving PATCHes it)
  events: null,
  signedIn: false,
  paused: false,
  // Latest `server` event per alias, numbered: a list fetched while one arrived must not
  // overwrite the newer status it carried.
  serverEvents: new Map(),
  serverEventCount: 0,
  // What the form does not show of the loaded parameters (refiner, extra ...): sent back as is.
  carried: {},
  styles: [],
  modules: [],
  hires: {},
  adetailer: [],
  controlnet: [],
  downloads: new Map(),
};

// -- views ------------------------------------------------------------------------------------

const VIEWS = ["generate", "queue", "gallery", "servers"];

function show(route) {
  if (!state.signedIn) return;
  // `#gallery?jobs=<first>..<last>`: a batch's images, the link notifications carry.
  let [view, query] = route.split("?");
  if (!VIEWS.includes(view)) view = "generate";
  if (view === "gallery") {
    const jobs = new URLSearchParams(query || "").get("jobs") || null;
    if (jobs !== state.galleryJobs) {
      state.galleryJobs = jobs;
      state.galleryLoaded = false;
    }
  }
  for (const name of ["login", ...VIEWS]) $(`view-${name}`).hidden = name !== view;
  for (const tab of document.querySelectorAll("#tabs button")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  if (view === "gallery" && !state.galleryLoaded) loadGallery(true);
  if (view === "servers") loadSessions();
  const hash = view === "gallery" && state.galleryJobs ? `gallery?jobs=${state.galleryJobs}` : view;
  if (location.hash.slice(1) !== hash) history.replaceState(null, "", `#${hash}`);
  window.scrollTo(0, 0);
}

function showLogin() {
  state.signedIn = false;
  if (state.events) state.events.close();
  $("tabs").hidden = true;
  for (const name of VIEWS) $(`view-${name}`).hidden = true;
  $("view-login").hidden = false;
  setLive("signed out");
}

function setLive(text) {
  const live = $("live");
  live.textContent = text;
  live.dataset.on = text === "live" ? "1" : "0";
}

// -- generate ---------------------------------------------------------------------------------

const SETTINGS_KEY = "mobilesd.generate.v1";
const DEFAULTS = {
  prompt: "",
  negative_prompt: "",
  target_server_alias: "",
  checkpoint_name: "",
  loras: [],
  width: 512,
  height: 512,
  steps: 20,
  cfg_scale: 7,
  sampler_name: "Euler",
  scheduler: "",
  seed: -1,
  n_iter: 1,
  batch_size: 1,
  subseed: -1,
  subseed_strength: 0,
};
const TEXT_FIELDS = ["prompt", "negative_prompt"];
const SELECT_FIELDS = ["target_server_alias", "checkpoint_name", "sampler_name", "scheduler"];
const NUMBER_FIELDS = ["width", "height", "steps", "cfg_scale", "seed", "n_iter", "batch_size", "subseed", "subseed_strength", "clip_skip", "distilled_cfg_scale"];
const LIST_FIELDS = ["loras", "styles", "modules", "hires", "adetailer", "controlnet"];
// Every other GenerationParams field (refiner, extra, ...) rides along unchanged in
// `state.carried`, so a job loaded into the form is sent back as it was.
const SHOWN = new Set([...TEXT_FIELDS, ...SELECT_FIELDS, ...NUMBER_FIELDS, ...LIST_FIELDS]);
const HIRES_DEFAULT = { upscaler: "Latent", scale: 2, steps: 0, denoising_strength: 0.7 };
const wanted = {}; // select values waiting for their options (from the server's model list)

function control(name) {
  return $("gen-form").elements.namedItem(name);
}

function fillSelect(select, items, value, first) {
  select.replaceChildren();
  if (first) select.append(h("option", { value: "", text: first }));
  const values = new Set();
  for (const item of items) {
    const [v, label] = Array.isArray(item) ? item : [item, item];
    values.add(v);
    select.append(h("option", { value: v, text: label }));
  }
  if (value && !values.has(value)) select.append(h("option", { value, text: value }));
  select.value = value || "";
}

function setForm(params) {
  const p = { ...DEFAULTS, ...params };
  for (const name of TEXT_FIELDS) control(name).value = p[name] ?? "";
  for (const name of NUMBER_FIELDS) control(name).value = p[name] ?? "";
  for (const name of SELECT_FIELDS) {
    wanted[name] = p[name] ?? "";
    const select = control(name);
    if ([...select.options].some((o) => o.value === wanted[name])) select.value = wanted[name];
    else select.append(h("option", { value: wanted[name], text: wanted[name] }));
    select.value = wanted[name];
  }
  state.loras = (p.loras || []).map((l) => ({ ...l, name: String(l.name), weight: Number(l.weight ?? 1) }));
  renderLoras();
  state.styles = [...(p.styles || [])];
  state.modules = [...(p.modules || [])];
  renderTags();
  state.hires = { ...HIRES_DEFAULT, ...(p.hires || {}) };
  $("f-hires").checked = Boolean(p.hires);
  for (const el of document.querySelectorAll("[data-hr]")) {
    const value = state.hires[el.dataset.hr] ?? "";
    if (el.tagName === "SELECT") fillSelect(el, state.models?.upscalers || [], value);
    else el.value = value;
  }
  state.adetailer = (p.adetailer || []).map((u) => ({ ...u }));
  state.controlnet = (p.controlnet || []).map((u) => ({ ...u }));
  renderUnits();
  state.carried = Object.fromEntries(Object.entries(params || {}).filter(([key]) => !SHOWN.has(key)));
  renderCarried();
  syncSizePreset();
}

// A number field's value: a number, or what was typed (so the core's 422 names the field).
function numberOf(value) {
  const number = Number(value);
  return String(value).trim() !== "" && Number.isFinite(number) ? number : value;
}

function readForm() {
  const params = { ...state.carried };
  for (const name of TEXT_FIELDS) params[name] = control(name).value;
  for (const name of NUMBER_FIELDS) {
    const value = control(name).value;
    if (value.trim() !== "") params[name] = numberOf(value);
  }
  for (const name of ["checkpoint_name", "sampler_name", "scheduler"]) {
    const value = control(name).value;
    if (value) params[name] = value;
  }
  params.loras = state.loras.map((l) => ({ ...l }));
  params.styles = [...state.styles];
  params.modules = [...state.modules];
  params.hires = null;
  if ($("f-hires").checked) {
    params.hires = { ...state.hires };
    for (const el of document.querySelectorAll("[data-hr]")) params.hires[el.dataset.hr] = el.tagName === "SELECT" ? el.value : numberOf(el.value);
  }
  params.adetailer = state.adetailer.length ? state.adetailer.map((u) => ({ ...u })) : null;
  params.controlnet = state.controlnet.length ? state.controlnet.map((u) => ({ ...u })) : null;
  return params;
}

function isSet(value) {
  if (value === null || value === undefined) return false;
  return typeof value !== "object" || Object.keys(value).length > 0;
}

function renderCarried() {
  const names = Object.keys(state.carried).filter((key) => isSet(state.carried[key]));
  const note = $("gen-carried");
  note.hidden = names.length === 0;
  note.title = names.join(", ");
  note.replaceChildren(
    `+ ${names.length} more setting${names.length === 1 ? "" : "s"} (${names.join(", ")}) `,
    h("button", { type: "button", class: "ghost", text: "Drop", onclick: () => { state.carried = {}; renderCarried(); } }),
  );
}

// Chosen styles and modules: ordered lists (Forge applies them in order), one removable row each.
function renderTags() {
  for (const name of ["styles", "modules"]) {
    $(`${name}-list`).replaceChildren(
      ...state[name].map((item, i) =>
        h(
          "div",
          { class: "lora tag" },
          h("span", { class: "lora-name", text: item }),
          h("button", { type: "button", class: "icon", "aria-label": `Remove ${item}`, text: "✕", onclick: () => { state[name].splice(i, 1); renderTags(); } }),
          h("p", { class: "err", "data-for": `${name}[${i}]` }),
        ),
      ),
    );
  }
}

// ADetailer passes and ControlNet units: the fields shown are edited in place on the unit, so
// the ones not shown (mask blur, a control image ...) stay as they were.
const UNIT_FIELDS = {
  adetailer: [
    ["model", "Model", "adetailer_models"],
    ["prompt", "Prompt"],
    ["confidence", "Confidence", 0.05],
    ["denoising_strength", "Denoising", 0.05],
  ],
  controlnet: [
    ["module", "Preprocessor", "controlnet_modules"],
    ["model", "Model", "controlnet_models"],
    ["weight", "Weight", 0.05],
    ["guidance_start", "Start", 0.05],
    ["guidance_end", "End", 0.05],
  ],
};
const UNIT_NEW = {
  adetailer: () => ({ model: state.models?.adetailer_models?.[0] || "face_yolov8n.pt", confidence: 0.3, denoising_strength: 0.4 }),
  controlnet: () => ({
    module: state.models?.controlnet_modules?.[0] || "None",
    model: state.models?.controlnet_models?.[0] || "None",
    weight: 1,
    guidance_start: 0,
    guidance_end: 1,
  }),
};

function unitInput(unit, key, kind, label) {
  const set = (e) => {
    unit[key] = typeof kind === "number" ? numberOf(e.target.value) : e.target.value;
  };
  const options = typeof kind === "string" && state.models ? state.models[kind] : null;
  let input;
  if (options) {
    input = h("select", { onchange: set });
    fillSelect(input, options, String(unit[key] ?? ""));
  } else {
    input = h("input", { value: String(unit[key] ?? ""), oninput: set, ...(typeof kind === "number" ? { type: "number", step: String(kind), inputmode: "decimal" } : {}) });
  }
  return h("label", { class: "field" }, label, input);
}

function renderUnits() {
  for (const name of ["adetailer", "controlnet"]) {
    $(`${name}-list`).replaceChildren(
      ...state[name].map((unit, i) =>
        h(
          "div",
          { class: "unit" },
          h("div", { class: "grid2" }, ...UNIT_FIELDS[name].map(([key, label, kind]) => unitInput(unit, key, kind, label))),
          h("p", { class: "err", "data-for": `${name}[${i}]` }),
          h("button", { type: "button", class: "ghost danger-text", text: "Remove", onclick: () => { state[name].splice(i, 1); renderUnits(); } }),
        ),
      ),
    );
  }
}

function saveSettings() {
  const settings = { ...readForm(), target_server_alias: control("target_server_alias").value };
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    /* private mode: nothing remembered */
  }
}

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {};
  } catch {
    return {};
  }
}

function syncSizePreset() {
  const value = `${control("width").value}x${control("height").value}`;
  const preset = $("f-size");
  preset.value = [...preset.options].some((o) => o.value === value) ? value : "custom";
}

function renderLoras() {
  const list = $("lora-list");
  list.replaceChildren(
    ...state.loras.map((lora, i) => {
      const weight = h("input", {
        type: "number",
        step: "0.05",
        inputmode: "decimal",
        value: String(lora.weight),
        "aria-label": `Weight of ${lora.name}`,
        oninput: (e) => {
          const n = Number(e.target.value);
          lora.weight = e.target.value.trim() === "" || !Number.isFinite(n) ? e.target.value : n;
        },
      });
      return h(
        "div",
        { class: "lora" },
        h("span", { class: "lora-name", text: lora.name }),
        weight,
        h("button", {
          type: "button",
          class: "icon",
          "aria-label": `Remove ${lora.name}`,
          text: "✕",
          onclick: () => {
            state.loras.splice(i, 1);
            renderLoras();
          },
        }),
        h("p", { class: "err", "data-for": `loras[${i}]` }),
      );
    }),
  );
}

function modelsServer() {
  const chosen = control("target_server_alias").value;
  if (chosen) return chosen;
  const online = state.servers.find((s) => s.enabled && s.status && s.status.online);
  return (online || state.servers[0] || {}).alias || "";
}

async function loadModels() {
  const alias = modelsServer();
  const note = document.querySelector('.err[data-for="checkpoint_name"]');
  if (!alias) {
    note.textContent = state.servers.length ? "" : "No server yet: add one under Servers.";
    fillModelSelects({ checkpoints: [], loras: [], samplers: [], schedulers: [] });
    return;
  }
  if (state.modelsFor === alias) return;
  state.modelsFor = alias;
  state.models = null;
  try {
    const models = await api("GET", `/api/v1/servers/${enc(alias)}/models`);
    if (state.modelsFor !== alias) return;
    note.textContent = "";
    state.models = models;
    fillModelSelects(models);
  } catch (error) {
    state.modelsFor = null;
    note.textContent = `Models of ${alias} not available: ${error.message}`;
  }
}

function fillModelSelects(models) {
  const current = shortModel(models.current_checkpoint);
  fillSelect(
    control("checkpoint_name"),
    models.checkpoints.map((c) => [c.title, shortModel(c.path || c.title)]),
    wanted.checkpoint_name,
    current ? `Server's current (${current})` : "Server's current",
  );
  fillSelect(control("sampler_name"), models.samplers, wanted.sampler_name || "Euler");
  fillSelect(control("scheduler"), models.schedulers, wanted.scheduler, "Automatic");
  fillSelect($("f-lora-add"), models.loras, "", "Add a LoRA…");
  fillSelect($("f-styles-add"), models.styles || [], "", "Add a style…");
  fillSelect($("f-modules-add"), models.modules || [], "", "Add a module…");
  const upscaler = $("f-hr-upscaler");
  fillSelect(upscaler, models.upscalers || [], upscaler.value || state.hires.upscaler);
  renderUnits();
}

function fillServerSelect() {
  const select = control("target_server_alias");
  const value = wanted.target_server_alias ?? select.value;
  fillSelect(
    select,
    state.servers.map((s) => [s.alias, `${s.alias}${s.status && s.status.online ? "" : " (offline)"}`]),
    value,
    "Any free server",
  );
}

function editJob(job) {
  // The form shows the job; what it has no control for (hires, extra, styles) stays on the job,
  // since saving sends only the form's fields and the core merges them.
  setForm({ ...job.generation_params, target_server_alias: job.target_server_alias || "" });
  state.editingJob = job.mobilesd_job_id;
  $("gen-submit").textContent = "Save changes";
  $("gen-stop-editing").hidden = false;
  $("every-line").hidden = true;
  const note = $("gen-editing");
  note.textContent = `Editing pending job …${job.mobilesd_job_id.slice(-8)}`;
  note.hidden = false;
  setText("gen-ok", "");
  show("generate");
  loadModels();
}

function stopEditing() {
  state.editingJob = null;
  $("gen-submit").textContent = "Add to queue";
  $("gen-stop-editing").hidden = true;
  $("every-line").hidden = false;
  $("gen-editing").hidden = true;
}

function checkpointSweep(body) {
  const models = state.models;
  const titles = models ? models.checkpoints.map((c) => c.title).filter(Boolean) : [];
  if (!titles.length) return false;
  delete body.generation_params.checkpoint_name;
  body.matrix = { checkpoint_name: titles };
  return true;
}

async function submitJob(event) {
  event.preventDefault();
  const form = $("gen-form");
  const general = $("gen-error");
  clearErrors(form, general);
  setText("gen-ok", "");
  const body = { generation_params: readForm() };
  const target = control("target_server_alias").value;
  if (target) body.target_server_alias = target;
  const editing = state.editingJob;
  const every = !editing && $("f-every-checkpoint").checked;
  if (every && !checkpointSweep(body)) {
    general.textContent = "No checkpoint list from the server yet; nothing was queued.";
    return;
  }
  const button = $("gen-submit");
  button.disabled = true;
  try {
    const since = performance.now();
    if (editing) {
      body.target_server_alias = target || null;
      const job = await api("PATCH", `/api/v1/queue/jobs/${enc(editing)}`, body);
      upsertJob(job, since);
      stopEditing();
      setText("gen-ok", "Changes saved.");
      return;
    }
    const answer = await api("POST", "/api/v1/generate", body);
    saveSettings();
    if (!answer.job) {
      const n = answer.mobilesd_job_ids.length;
      setText("gen-ok", `Added ${n} jobs to the queue as one batch.`);
      return; // their cards come with the event stream
    }
    upsertJob(answer.job, since);
    const count = answer.job.generation_params.n_iter * answer.job.generation_params.batch_size;
    setText("gen-ok", `Added to the queue (${count} image${count === 1 ? "" : "s"}).`);
  } catch (error) {
    if (editing && error.status === 409) {
      stopEditing();
      general.textContent = "That job has already started or finished; nothing was changed.";
    } else {
      showErrors(form, general, error, "generation_params.");
    }
  } finally {
    button.disabled = false;
  }
}

function setupGenerate() {
  const form = $("gen-form");
  form.addEventListener("submit", submitJob);
  $("gen-stop-editing").addEventListener("click", stopEditing);
  $("f-size").addEventListener("change", (e) => {
    if (e.target.value === "custom") return control("width").focus();
    const [w, hgt] = e.target.value.split("x");
    control("width").value = w;
    control("height").value = hgt;
  });
  for (const name of ["width", "height"]) control(name).addEventListener("input", syncSizePreset);
  $("seed-random").addEventListener("click", () => {
    control("seed").value = -1;
  });
  control("target_server_alias").addEventListener("change", (e) => {
    wanted.target_server_alias = e.target.value;
    loadModels();
  });
  for (const name of ["checkpoint_name", "sampler_name", "scheduler"]) {
    control(name).addEventListener("change", (e) => {
      wanted[name] = e.target.value;
    });
  }
  $("f-lora-add").addEventListener("change", (e) => {
    const name = e.target.value;
    if (name && !state.loras.some((l) => l.name === name)) state.loras.push({ name, weight: 1 });
    e.target.value = "";
    renderLoras();
  });
  for (const name of ["styles", "modules"]) {
    $(`f-${name}-add`).addEventListener("change", (e) => {
      const value = e.target.value;
      if (value && !state[name].includes(value)) state[name].push(value);
      e.target.value = "";
      renderTags();
    });
  }
  for (const name of ["adetailer", "controlnet"]) {
    $(`${name}-add`).addEventListener("click", () => {
      state[name].push(UNIT_NEW[name]());
      renderUnits();
    });
  }
  setForm(loadSettings());
}

// -- civitai import and downloads ------------------------------------------------------------

const KEPT_LABELS = {
  clip_skip: (v) => `clip skip ${v}`,
  hires: (v) => `hires fix ${v.scale}× (${v.upscaler})`,
  distilled_cfg_scale: (v) => `distilled CFG ${v}`,
};

function renderKept(params) {
  const parts = Object.entries(params)
    .filter(([key, value]) => value !== null && value !== undefined && KEPT_LABELS[key])
    .map(([key, value]) => KEPT_LABELS[key](value));
  const kept = $("civitai-kept");
  kept.hidden = parts.length === 0;
  kept.textContent = `Also from the image (under More settings / Hires fix): ${parts.join(", ")}`;
}

function resourceLabel(r) {
  const name = r.model_name || r.name || `version ${r.model_version_id}`;
  const version = r.version_name ? ` · ${r.version_name}` : "";
  return `${r.type === "checkpoint" ? "Checkpoint" : r.type === "lora" ? "LoRA" : "Model"}: ${name}${version}`;
}

function renderImport(answer) {
  const warnings = $("civitai-warnings");
  warnings.replaceChildren(...answer.warnings.map((w) => h("li", { text: w })));
  warnings.hidden = answer.warnings.length === 0;
  const list = $("civitai-missing-list");
  list.replaceChildren(
    ...answer.missing.map((r) => {
      const note = h("small", { class: "err" });
      const button = h("button", {
        type: "button",
        class: "ghost",
        text: "Download",
        disabled: !r.downloadable,
        title: r.downloadable ? "" : "Civitai does not say which model this is",
        onclick: async () => {
          button.disabled = true;
          note.textContent = "";
          try {
            const accepted = await api("POST", "/api/v1/civitai/download-model", { model_version_id: r.model_version_id });
            if (accepted.download) downloadEvent(accepted.download);
            button.textContent = "Downloading…";
          } catch (error) {
            button.disabled = false;
            note.textContent = error.message;
          }
        },
      });
      return h("li", { "data-version": r.model_version_id || "" }, h("span", { class: "what", text: resourceLabel(r) }, note), button);
    }),
  );
  $("civitai-missing").hidden = answer.missing.length === 0;
}

async function importCivitai(event) {
  event.preventDefault();
  const url = $("civitai-url").value.trim();
  setText("civitai-error", "");
  if (!url) return setText("civitai-error", "Paste a link such as https://civitai.com/images/12345.");
  const button = $("civitai-import");
  button.disabled = true;
  setText("civitai-status", "Reading the image's generation data…");
  try {
    const answer = await api("POST", "/api/v1/civitai/image-info", { url });
    const params = answer.generation_params;
    setForm({ ...DEFAULTS, ...params, target_server_alias: control("target_server_alias").value });
    renderKept(params);
    renderImport(answer);
    state.modelsFor = null;
    loadModels();
    setText("civitai-status", `Settings of image ${answer.image.id} loaded: review them, then add to the queue.`);
  } catch (error) {
    setText("civitai-status", "");
    const details = error.details.map((d) => d.message).join("; ");
    setText("civitai-error", details ? `${error.message.split(":")[0]}: ${details}` : error.message);
  } finally {
    button.disabled = false;
  }
}

function sizeText(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(2)} GB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
}

const ACTIVE_DOWNLOADS = new Set(["queued", "downloading", "verifying"]);
// The list is rebuilt on every progress event (a few a second): each Cancel button is kept across
// rebuilds, so a tap that lands mid-rebuild still reaches it.
const cancelControls = new Map();

function cancelControl(d) {
  let control = cancelControls.get(d.download_id);
  if (control) return control;
  const note = h("small", { class: "err" });
  const button = h("button", {
    type: "button",
    class: "ghost",
    text: "Cancel",
    onclick: async () => {
      button.disabled = true;
      note.textContent = "";
      try {
        downloadEvent(await api("POST", `/api/v1/civitai/downloads/${enc(d.download_id)}/cancel`));
      } catch (error) {
        button.disabled = false;
        note.textContent = error.message;
      }
    },
  });
  control = h("div", { class: "cancel" }, button, note);
  cancelControls.set(d.download_id, control);
  return control;
}

function downloadItem(d) {
  const name = d.model_name ? `${d.model_name}${d.version_name ? ` · ${d.version_name}` : ""}` : d.filename || `version ${d.model_version_id}`;
  const done = d.status === "completed";
  const line = {
    queued: "waiting",
    downloading: `${sizeText(d.bytes_done)} of ${sizeText(d.bytes_total)}`,
    verifying: "checking the file…",
    completed: `done: ${d.relative_path || ""}`,
    failed: "failed",
    cancelled: "cancelled",
  }[d.status] || d.status;
  return h(
    "li",
    { "data-id": d.download_id, "data-status": d.status },
    h("span", { class: "name", text: name }),
    d.status === "downloading" || d.status === "queued"
      ? h("progress", { max: String(d.bytes_total || 1), value: String(d.bytes_done || 0) })
      : null,
    h("span", { class: "state", text: d.note && !done ? `${line} · ${d.note}` : line }),
    d.error ? h("p", { class: "err", text: d.error }) : null,
    ACTIVE_DOWNLOADS.has(d.status) ? cancelControl(d) : null,
  );
}

function renderDownloads() {
  const items = [...state.downloads.values()].sort((a, b) => (a.created < b.created ? 1 : -1)).slice(0, 10);
  $("download-list").replaceChildren(...items.map(downloadItem));
  $("downloads-box").hidden = items.length === 0;
  for (const id of cancelControls.keys()) {
    if (!ACTIVE_DOWNLOADS.has(state.downloads.get(id)?.status)) cancelControls.delete(id);
  }
}

function downloadEvent(d) {
  const before = state.downloads.get(d.download_id);
  state.downloads.set(d.download_id, d);
  renderDownloads();
  const missing = $("civitai-missing-list").querySelectorAll(`li[data-version="${CSS.escape(String(d.model_version_id))}"] button`);
  if (d.status === "completed" && (!before || before.status !== "completed")) {
    for (const button of missing) {
      button.textContent = "Downloaded";
      button.disabled = true;
    }
    state.modelsFor = null;
    loadModels();
  } else if (d.status === "cancelled") {
    for (const button of missing) {
      button.textContent = "Download";
      button.disabled = false;
    }
  }
}

async function loadDownloads() {
  try {
    const answer = await api("GET", "/api/v1/civitai/downloads");
    state.downloads = new Map(answer.downloads.map((d) => [d.download_id, d]));
    renderDownloads();
  } catch {
    /* the list stays as it was; events keep it current */
  }
}

function setupCivitai() {
  $("civitai-form").addEventListener("submit", importCivitai);
}

// -- queue ------------------------------------------------------------------------------------

const STATUS_ORDER = { processing: 0, pending: 1 };
const cards = new Map();
let queueFrame = 0;

// The event stream and API answers race: an answer sent before an event may arrive after it.
// So a job from an answer is taken only when no event about that job came in since the request
// was sent (`since`); events themselves always win.
const lastEvent = new Map();

function upsertJob(job, since) {
  const id = job.mobilesd_job_id;
  if (since === undefined) lastEvent.set(id, performance.now());
  else if ((lastEvent.get(id) ?? -1) >= since) return;
  state.jobs.set(id, job);
  scheduleQueue();
}

function scheduleQueue() {
  if (!queueFrame) queueFrame = requestAnimationFrame(renderQueue);
}

function sortedJobs() {
  return [...state.jobs.values()].sort((a, b) => {
    const ra = STATUS_ORDER[a.status] ?? 2;
    const rb = STATUS_ORDER[b.status] ?? 2;
    if (ra !== rb) return ra - rb;
    if (a.status === "pending") return (a.position ?? 0) - (b.position ?? 0);
    return b.mobilesd_job_id < a.mobilesd_job_id ? -1 : b.mobilesd_job_id > a.mobilesd_job_id ? 1 : 0;
  });
}

async function jobAction(job, card, method, path, body) {
  card.refs.error.textContent = "";
  try {
    const since = performance.now();
    const answer = await api(method, path, body);
    if (answer && answer.job) upsertJob(answer.job, since);
    else if (answer && answer.mobilesd_job_id) upsertJob(answer, since);
    return true;
  } catch (error) {
    card.refs.error.textContent = error.message;
    return false;
  }
}

function makeCard(id) {
  const refs = {};
  const act = (label, cls, handler) => h("button", { type: "button", class: cls, text: label, onclick: handler });
  const job = () => state.jobs.get(id);
  const base = `/api/v1/queue/jobs/${enc(id)}`;
  const card = h(
    "li",
    { class: "job card", "data-id": id },
    h(
      "div",
      { class: "job-head" },
      (refs.status = h("span", { class: "pill" })),
      (refs.id = h("code", { class: "jid muted", title: id, text: id.slice(-8) })),
      (refs.time = h("time", { class: "muted" })),
    ),
    (refs.prompt = h("p", { class: "prompt" })),
    (refs.meta = h("p", { class: "muted job-meta" })),
    (refs.progress = h(
      "div",
      { class: "progress", hidden: true },
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, (refs.fill = h("div", { class: "fill" }))),
      (refs.progressText = h("span", { class: "muted" })),
    )),
    (refs.detail = h("p", { class: "detail" })),
    (refs.preview = h("img", { class: "preview", alt: "Live preview", hidden: true })),
    (refs.thumbs = h("div", { class: "thumbs" })),
    (refs.error = h("p", { class: "err", role: "alert" })),
    (refs.actions = h(
      "div",
      { class: "row actions" },
      // A plain link: the session cookie goes with it, and the browser streams the zip to disk.
      (refs.zip = h("a", { class: "button ghost zip", hidden: true })),
      (refs.up = act("↑", "icon", () => jobAction(job(), card, "POST", `${base}/move`, { to: "up" }))),
      (refs.down = act("↓", "icon", () => jobAction(job(), card, "POST", `${base}/move`, { to: "down" }))),
      (refs.edit = act("Edit", "ghost", () => editJob(job()))),
      (refs.cancel = act("Cancel", "ghost", () => jobAction(job(), card, "POST", `${base}/cancel`))),
      (refs.retry = act("Retry", "ghost", () => jobAction(job(), card, "POST", `${base}/retry`))),
      (refs.remove = act("Remove", "ghost", async () => {
        if (await jobAction(job(), card, "DELETE", base)) removeJob(id);
      })),
    )),
  );
  card.refs = refs;
  return card;
}

function updateCard(card, job, zip) {
  const { refs } = card;
  const p = job.generation_params || {};
  const status = job.status;
  if (card.dataset.status !== status) {
    card.dataset.status = status;
    refs.status.textContent = status;
    refs.status.className = `pill ${status}`;
  }
  const server = job.assigned_server_alias || job.target_server_alias || "any server";
  const count = (p.n_iter || 1) * (p.batch_size || 1);
  refs.meta.textContent = `${server} · ${p.width}×${p.height} · ${p.steps} steps${count > 1 ? ` · ×${count}` : ""}`;
  // Jobs queued together (a sweep, a job file) share a batch label.
  if (job.batch_id) {
    card.dataset.batch = job.batch_id;
    refs.meta.textContent += ` · batch ${job.batch_id.slice(-4)}`;
  }
  refs.time.textContent = timeText(job.completion_timestamp || job.started_timestamp || job.creation_timestamp);
  if (refs.prompt.textContent !== p.prompt) refs.prompt.textContent = p.prompt;

  const progress = status === "processing" ? job.progress : null;
  refs.progress.hidden = status !== "processing";
  if (status === "processing") {
    const fraction = Math.max(0, Math.min(1, (progress && progress.fraction) || 0));
    refs.fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    refs.fill.parentElement.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    card.dataset.fraction = fraction.toFixed(3);
    let text = `${Math.round(fraction * 100)}%`;
    if (progress && progress.batches > 1) text += ` · image ${progress.batch}/${progress.batches}`;
    if (progress && progress.steps) text += ` · step ${progress.step}/${progress.steps}`;
    if (progress && progress.phase && !progress.steps) text += ` · ${progress.phase}`;
    if (progress && progress.eta_seconds != null) text += ` · ${Math.ceil(progress.eta_seconds)} s left`;
    if (!progress) text = "starting…";
    refs.progressText.textContent = text;
  }
  // Each job event for it (a new object) asks for the preview again; the ETag keeps unchanged
  // bytes from coming twice.
  if (status === "processing" && progress && progress.preview && card.previewOf !== job) {
    card.previewOf = job;
    refreshPreview(card);
  } else if (status !== "processing" && card.preview) {
    URL.revokeObjectURL(card.preview.url);
    card.preview = null;
    refs.preview.hidden = true;
    refs.preview.removeAttribute("src");
  }

  const result = job.result_details || {};
  let detail = "";
  if (status === "failed" || status === "cancelled") detail = result.error || "";
  else if (status === "pending" && job.retry_at) detail = `Retrying at ${timeText(job.retry_at)} (attempt ${job.attempts + 1})`;
  else if (status === "pending" && job.waiting_reason) detail = job.waiting_reason;
  else if (status === "pending" && job.target_server_alias) detail = `Waiting for ${job.target_server_alias}`;
  else if (status === "completed" && result.info && result.info.seed != null) detail = `Seed ${result.info.seed}`;
  refs.detail.textContent = detail;
  refs.detail.hidden = !detail;

  const images = status === "completed" && Array.isArray(result.images) ? result.images : [];
  if (refs.thumbs.dataset.key !== images.join("|")) {
    refs.thumbs.dataset.key = images.join("|");
    refs.thumbs.replaceChildren(
      ...images.slice(0, 8).map((name) =>
        h(
          "button",
          { type: "button", class: "thumb", "aria-label": "Open image", onclick: () => openImageByName(job.mobilesd_job_id, name) },
          h("img", { src: `/gallery_files/${enc(name)}?thumb=1`, alt: "", loading: "lazy", decoding: "async" }),
        ),
      ),
    );
  }

  // One link per batch, on its topmost completed card; a lone image has its own Download.
  const zipHere = Boolean(zip && zip.card === job.mobilesd_job_id && zip.images > 1);
  refs.zip.hidden = !zipHere;
  if (zipHere) {
    const href = `/api/v1/gallery/archive?batch_id=${enc(job.batch_id)}`;
    if (refs.zip.getAttribute("href") !== href) {
      refs.zip.setAttribute("href", href);
      refs.zip.setAttribute("download", `mobilesd-${job.batch_id}.zip`);
    }
    // Short enough to share the row with Retry and Remove on a 360 px screen; the name says more.
    const label = `Zip · ${zip.images}`;
    if (refs.zip.textContent !== label) {
      refs.zip.textContent = label;
      refs.zip.setAttribute("aria-label", `${label} images of batch ${job.batch_id.slice(-4)}`);
    }
  }

  const finished = !(status in STATUS_ORDER);
  refs.up.hidden = refs.down.hidden = refs.edit.hidden = status !== "pending";
  refs.cancel.hidden = finished;
  refs.retry.hidden = !finished;
  refs.remove.hidden = !finished;
}

// batch id -> its images among the listed jobs, and the card (topmost completed) for its link.
function batchZips(jobs) {
  const zips = new Map();
  for (const job of jobs) {
    const images = (job.status === "completed" && job.result_details?.images?.length) || 0;
    if (!job.batch_id || !images) continue;
    const zip = zips.get(job.batch_id);
    if (zip) zip.images += images;
    else zips.set(job.batch_id, { images, card: job.mobilesd_job_id });
  }
  return zips;
}

async function refreshPreview(card) {
  const p = card.preview || (card.preview = { etag: "", url: "", busy: false, again: false });
  if (p.busy) return void (p.again = true);
  p.busy = true;
  try {
    do {
      p.again = false;
      const response = await fetch(`/api/v1/queue/jobs/${enc(card.dataset.id)}/preview`, {
        cache: "no-store",
        headers: p.etag ? { "If-None-Match": p.etag } : {},
      });
      if (response.status !== 200 || card.preview !== p) continue;
      const blob = await response.blob();
      if (card.preview !== p) break; // the job ended meanwhile
      p.etag = response.headers.get("ETag") || "";
      if (p.url) URL.revokeObjectURL(p.url);
      p.url = URL.createObjectURL(blob);
      card.refs.preview.src = p.url;
      card.refs.preview.hidden = false;
    } while (p.again && card.preview === p);
  } catch {
    /* the next progress event asks again */
  } finally {
    p.busy = false;
  }
}

function renderQueue() {
  queueFrame = 0;
  const list = $("queue-list");
  const all = sortedJobs();
  const filter = $("queue-filter").value;
  const jobs = filter ? all.filter((job) => job.status === filter) : all;
  const zips = batchZips(jobs);
  const seen = new Set();
  jobs.forEach((job, i) => {
    const id = job.mobilesd_job_id;
    seen.add(id);
    let card = cards.get(id);
    if (!card) cards.set(id, (card = makeCard(id)));
    updateCard(card, job, zips.get(job.batch_id));
    if (list.children[i] !== card) list.insertBefore(card, list.children[i] || null);
  });
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  const counts = { processing: 0, pending: 0, completed: 0, failed: 0, cancelled: 0 };
  for (const job of all) counts[job.status] = (counts[job.status] || 0) + 1;
  const parts = state.paused ? ["paused"] : [];
  if (counts.processing) parts.push(`${counts.processing} running`);
  if (counts.pending) parts.push(`${counts.pending} waiting`);
  if (counts.completed) parts.push(`${counts.completed} done`);
  if (counts.failed) parts.push(`${counts.failed} failed`);
  if (counts.cancelled) parts.push(`${counts.cancelled} cancelled`);
  setText("queue-counts", parts.join(" · "));
  $("queue-empty").hidden = all.length > 0;
  $("queue-clear").hidden = !(counts.completed + counts.failed + counts.cancelled);
  const active = counts.processing + counts.pending;
  const badge = $("queue-badge");
  badge.hidden = !active;
  badge.textContent = String(active);
}

async function loadQueueState() {
  try {
    queueState(await api("GET", "/api/v1/queue"));
  } catch {
    /* the queue event keeps it current */
  }
}

function removeJob(id) {
  lastEvent.set(id, performance.now());
  state.jobs.delete(id);
  scheduleQueue();
}

async function loadJobs() {
  try {
    const since = performance.now();
    const answer = await api("GET", "/api/v1/queue/jobs?limit=200");
    const fresh = new Map(answer.jobs.map((job) => [job.mobilesd_job_id, job]));
    for (const [id, at] of lastEvent) {
      if (at < since) continue;
      if (state.jobs.has(id)) fresh.set(id, state.jobs.get(id));
      else fresh.delete(id);
    }
    state.jobs = fresh;
    setText("queue-error", "");
    scheduleQueue();
  } catch (error) {
    setText("queue-error", error.message);
  }
}

function queueState(data) {
  const changed = state.paused !== Boolean(data.paused);
  state.paused = Boolean(data.paused);
  setText("queue-pause", state.paused ? "Resume queue" : "Pause queue");
  scheduleQueue();
  if (changed) loadJobs(); // each waiting job's reason changes with it
}

function setupQueue() {
  $("queue-filter").addEventListener("change", scheduleQueue);
  $("queue-pause").addEventListener("click", async () => {
    setText("queue-error", "");
    try {
      queueState(await api("POST", `/api/v1/queue/${state.paused ? "resume" : "pause"}`));
    } catch (error) {
      setText("queue-error", error.message);
    }
  });
  $("queue-clear").addEventListener("click", async () => {
    setText("queue-error", "");
    try {
      await api("POST", "/api/v1/queue/clear", {});
      for (const job of [...state.jobs.values()]) if (!(job.status in STATUS_ORDER)) state.jobs.delete(job.mobilesd_job_id);
      scheduleQueue();
    } catch (error) {
      setText("queue-error", error.message);
    }
  });
}

// -- gallery ----------------------------------------------------------------------------------

const PAGE = 30;
let viewing = null;

function tile(entry) {
  return h(
    "li",
    { "data-name": entry.filename },
    h(
      "button",
      { type: "button", class: "tile", "aria-label": entry.prompt || entry.filename, onclick: () => openImage(entry) },
      h("img", {
        src: entry.thumb_url,
        alt: "",
        loading: "lazy",
        decoding: "async",
        width: String(entry.width || 1),
        height: String(entry.height || 1),
      }),
    ),
  );
}

function renderGalleryMeta() {
  const shown = state.images.length;
  const count = state.imagesTotal ? `${state.imagesTotal} image${state.imagesTotal === 1 ? "" : "s"}` : "";
  setText("gallery-count", state.galleryJobs ? `Batch: ${count || "no images"}` : count);
  $("gallery-all").hidden = !state.galleryJobs;
  $("gallery-empty").hidden = shown > 0 || !state.galleryLoaded;
  $("gallery-more").hidden = shown >= state.imagesTotal;
}

async function loadGallery(reset) {
  if (state.galleryLoading) return;
  state.galleryLoading = true;
  const offset = reset ? 0 : state.images.length;
  try {
    const only = state.galleryJobs ? `&jobs=${enc(state.galleryJobs)}` : "";
    const answer = await api("GET", `/api/v1/gallery/images?limit=${PAGE}&offset=${offset}${only}`);
    const grid = $("gallery-grid");
    if (reset) {
      state.images = [];
      grid.replaceChildren();
    }
    const known = new Set(state.images.map((e) => e.filename));
    const fresh = answer.images.filter((e) => !known.has(e.filename));
    state.images.push(...fresh);
    grid.append(...fresh.map(tile));
    state.imagesTotal = answer.total;
    state.galleryLoaded = true;
    setText("gallery-error", "");
  } catch (error) {
    setText("gallery-error", error.message);
  } finally {
    state.galleryLoading = false;
    renderGalleryMeta();
  }
}

function inShownBatch(entry) {
  if (!state.galleryJobs) return true;
  const [first, last = first] = state.galleryJobs.split("..");
  const id = entry.mobilesd_job_id || "";
  return id >= first && id <= last;
}

function imageAdded(entry) {
  if (!state.galleryLoaded || !inShownBatch(entry)) return;
  if (state.images.some((e) => e.filename === entry.filename)) return;
  state.images.unshift(entry);
  state.imagesTotal += 1;
  $("gallery-grid").prepend(tile(entry));
  renderGalleryMeta();
}

function imageRemoved(entry) {
  const index = state.images.findIndex((e) => e.filename === entry.filename);
  if (index < 0) return;
  state.images.splice(index, 1);
  state.imagesTotal = Math.max(0, state.imagesTotal - 1);
  const li = $("gallery-grid").querySelector(`li[data-name="${CSS.escape(entry.filename)}"]`);
  if (li) li.remove();
  renderGalleryMeta();
  if (viewing && viewing.filename === entry.filename) $("image-dialog").close();
}

function openImage(entry) {
  viewing = entry;
  const img = $("img-full");
  img.src = entry.url;
  img.width = entry.width || 0;
  img.height = entry.height || 0;
  const rows = [
    ["Prompt", entry.prompt],
    ["Negative", entry.negative_prompt],
    ["Seed", entry.seed],
    ["Model", entry.checkpoint],
    ["Size", entry.width && `${entry.width} × ${entry.height}`],
    ["Created", timeText(entry.created)],
  ];
  $("img-meta").replaceChildren(
    ...rows
      .filter(([, value]) => value !== undefined && value !== null && value !== "")
      .flatMap(([key, value]) => [h("dt", { text: key }), h("dd", { text: String(value) })]),
  );
  const download = $("img-download");
  download.href = entry.url;
  download.setAttribute("download", entry.filename);
  setText("img-error", "");
  $("img-reuse").hidden = !entry.mobilesd_job_id && !entry.prompt;
  $("image-dialog").showModal();
  $("img-close").focus();
}

async function openImageByName(jobId, name) {
  const known = state.images.find((e) => e.filename === name);
  if (known) return openImage(known);
  try {
    const answer = await api("GET", `/api/v1/gallery/images?job_id=${enc(jobId)}&limit=100`);
    const entry = answer.images.find((e) => e.filename === name);
    if (entry) openImage(entry);
  } catch (error) {
    setText("queue-error", error.message);
  }
}

async function reuseSettings() {
  const entry = viewing;
  let params = null;
  if (entry.mobilesd_job_id) {
    try {
      params = (await api("GET", `/api/v1/queue/jobs/${enc(entry.mobilesd_job_id)}`)).generation_params;
    } catch (error) {
      if (error.status !== 404) return setText("img-error", error.message);
    }
  }
  params = { ...DEFAULTS, ...(params || {}), ...(params ? {} : { prompt: entry.prompt || "", negative_prompt: entry.negative_prompt || "", width: entry.width, height: entry.height }) };
  // A fixed seed is the job's own (the same job again); a random one becomes the image's.
  if (entry.seed !== undefined && entry.seed !== null && !(params.seed >= 0)) params.seed = entry.seed;
  params.target_server_alias = control("target_server_alias").value;
  setForm(params);
  state.modelsFor = null;
  loadModels();
  $("image-dialog").close();
  setText("gen-ok", "Settings of that image loaded.");
  show("generate");
}

function setupGallery() {
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  $("gallery-all").addEventListener("click", () => {
    state.galleryJobs = null;
    state.galleryLoaded = false;
    show("gallery");
  });
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && state.galleryLoaded) loadGallery(false);
    }, { rootMargin: "400px" }).observe($("gallery-more"));
  }
  const dialog = $("image-dialog");
  $("img-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close();
  });
  dialog.addEventListener("close", () => {
    $("img-full").removeAttribute("src");
    viewing = null;
  });
  $("img-reuse").addEventListener("click", reuseSettings);
  $("img-delete").addEventListener("click", async () => {
    const entry = viewing;
    if (!(await confirmDialog("Delete this image, its thumbnail and its metadata? This cannot be undone."))) return;
    try {
      await api("DELETE", `/api/v1/gallery/images/${enc(entry.filename)}`);
      imageRemoved(entry);
      dialog.close();
    } catch (error) {
      setText("img-error", error.message);
    }
  });
}

// -- servers ----------------------------------------------------------------------------------

function serverLine(s) {
  const st = s.status || {};
  if (!s.enabled) return "disabled";
  if (!st.checked) return "checking…";
  if (!st.online) return st.error || "offline";
  const parts = [st.busy ? `busy ${st.active_jobs}/${st.max_concurrent}` : "idle"];
  if (st.latency_ms != null) parts.push(`${Math.round(st.latency_ms)} ms`);
  return parts.join(" · ");
}

function renderServers() {
  const list = $("server-list");
  list.replaceChildren(
    ...state.servers.map((s) => {
      const st = s.status || {};
      const mood = !s.enabled ? "off" : st.online ? "on" : st.checked ? "down" : "off";
      return h(
        "li",
        { class: "card server", "data-alias": s.alias },
        h(
          "div",
          { class: "job-head" },
          h("span", { class: `dot ${mood}`, "aria-hidden": "true" }),
          h("strong", { text: s.alias }),
          h("span", { class: "muted grow", text: serverLine(s) }),
        ),
        h("p", { class: "muted mono", text: s.api_url }),
        st.current_checkpoint ? h("p", { class: "detail", text: `Model: ${shortModel(st.current_checkpoint)}` }) : null,
        s.checkpoint_dir || s.lora_dir
          ? h("p", { class: "muted", text: `Model sync: ${[s.checkpoint_dir && "checkpoints", s.lora_dir && "LoRAs"].filter(Boolean).join(" and ")}${s.sync_cap_gb ? `, up to ${s.sync_cap_gb} GB` : ""}` })
          : null,
        s.username || s.has_password
          ? h("p", { class: "muted", text: `${s.username ? `User ${s.username}` : "No user"} · ${s.has_password ? "password set" : "no password"}` })
          : null,
        h("p", { class: "err", role: "alert" }),
        h(
          "div",
          { class: "row actions" },
          h("button", { type: "button", class: "ghost", text: "Edit", onclick: () => editServer(s) }),
          h("button", { type: "button", class: "ghost danger-text", text: "Remove", onclick: (e) => removeServer(s, e.target) }),
        ),
      );
    }),
  );
  $("servers-empty").hidden = state.servers.length > 0;
}

async function loadServers() {
  const before = state.serverEventCount;
  try {
    const servers = await api("GET", "/api/v1/servers");
    state.servers = servers.map((s) => {
      const seen = state.serverEvents.get(s.alias);
      return seen && seen.n > before ? { ...s, status: seen.status } : s;
    });
    setText("servers-error", "");
  } catch (error) {
    setText("servers-error", error.message);
  }
  renderServers();
  fillServerSelect();
  loadModels();
}

function serverForm() {
  return $("server-form").elements;
}

function editServer(s) {
  state.editing = s ? s.alias : null;
  const f = serverForm();
  f.alias.value = s ? s.alias : "";
  f.api_url.value = s ? s.api_url : "";
  f.username.value = s ? s.username || "" : "";
  f.password.value = ""; // never prefilled
  f.max_concurrent.value = s ? s.max_concurrent : 1;
  f.checkpoint_dir.value = (s && s.checkpoint_dir) || "";
  f.lora_dir.value = (s && s.lora_dir) || "";
  f.sync_cap_gb.value = s && s.sync_cap_gb != null ? s.sync_cap_gb : "";
  $("s-sync").open = Boolean(s && (s.checkpoint_dir || s.lora_dir));
  f.enabled.checked = s ? s.enabled : true;
  setText("s-password-hint", s && s.has_password ? "A password is set; leave empty to keep it (a new host or port needs it again)." : "");
  setText("server-form-title", s ? `Edit ${s.alias}` : "Add a server");
  setText("server-save", s ? "Save" : "Add server");
  $("server-cancel").hidden = !s;
  clearErrors($("server-form"), $("server-form-error"));
  if (s) {
    $("server-form").scrollIntoView({ behavior: "smooth", block: "start" });
    f.api_url.focus({ preventScroll: true });
  }
}

async function saveServer(event) {
  event.preventDefault();
  const f = serverForm();
  const body = {
    alias: f.alias.value.trim(),
    api_url: f.api_url.value.trim(),
    username: f.username.value.trim() || null,
    enabled: f.enabled.checked,
  };
  const max = Number(f.max_concurrent.value);
  body.max_concurrent = f.max_concurrent.value.trim() && Number.isFinite(max) ? max : f.max_concurrent.value;
  // Empty clears (sync off); a number that isn't one goes as typed, so the 422 names the field.
  body.checkpoint_dir = f.checkpoint_dir.value.trim() || null;
  body.lora_dir = f.lora_dir.value.trim() || null;
  const cap = f.sync_cap_gb.value.trim();
  body.sync_cap_gb = !cap ? null : Number.isFinite(Number(cap)) ? Number(cap) : cap;
  if (f.password.value) body.password = f.password.value;
  const general = $("server-form-error");
  clearErrors($("server-form"), general);
  try {
    if (state.editing) await api("PUT", `/api/v1/servers/${enc(state.editing)}`, body);
    else await api("POST", "/api/v1/servers", body);
    editServer(null);
    await loadServers();
  } catch (error) {
    showErrors($("server-form"), general, error);
  }
}

async function removeServer(s, button) {
  const ok = await confirmDialog(`Remove the server ${s.alias}? Jobs waiting for it stay in the queue.`, "Remove");
  if (!ok) return;
  try {
    await api("DELETE", `/api/v1/servers/${enc(s.alias)}`);
    if (state.editing === s.alias) editServer(null);
    await loadServers();
  } catch (error) {
    button.closest("li").querySelector(".err").textContent = error.message;
  }
}

function serverEvent(data) {
  state.serverEventCount += 1;
  if (!data.removed) state.serverEvents.set(data.alias, { n: state.serverEventCount, status: data });
  const index = state.servers.findIndex((s) => s.alias === data.alias);
  if (data.removed || index < 0) return loadServers();
  state.servers[index] = { ...state.servers[index], status: data };
  renderServers();
  fillServerSelect();
  if (!state.modelsFor && data.online) loadModels();
}

function setupServers() {
  $("server-form").addEventListener("submit", saveServer);
  $("server-cancel").addEventListener("click", () => editServer(null));
  $("sign-out").addEventListener("click", signOut);
  $("sign-out-everywhere").addEventListener("click", signOutEverywhere);
}

// -- sessions ---------------------------------------------------------------------------------

async function loadSessions() {
  try {
    const { sessions } = await api("GET", "/api/v1/sessions");
    const others = sessions.filter((s) => !s.current).length;
    $("sessions-text").textContent =
      others === 0
        ? "Only this browser is signed in."
        : `This browser and ${others} other${others === 1 ? "" : "s"} are signed in.`;
  } catch {
    $("sessions-text").textContent = "";
  }
}

async function signOut() {
  $("sessions-error").textContent = "";
  try {
    // fetch() sends this page's Origin, which /logout checks.
    const response = await fetch("/logout", { method: "POST" });
    if (!response.ok) throw new Error(`The server answered ${response.status}.`);
  } catch (error) {
    $("sessions-error").textContent = error.message;
    return;
  }
  showLogin();
}

async function signOutEverywhere() {
  const ok = await confirmDialog(
    "Sign out every browser, this one included? Each signs in again with the link or the token.",
    "Sign out everywhere",
  );
  if (!ok) return;
  $("sessions-error").textContent = "";
  try {
    await api("DELETE", "/api/v1/sessions");
    showLogin();
  } catch (error) {
    $("sessions-error").textContent = error.message;
  }
}

// -- live events ------------------------------------------------------------------------------

function connectEvents() {
  if (state.events) state.events.close();
  const source = new EventSource("/api/v1/events");
  state.events = source;
  const on = (name, handler) =>
    source.addEventListener(name, (e) => {
      let data;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      handler(data);
    });
  source.onopen = () => setLive("live");
  source.onerror = () => {
    setLive("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, or the core went away): check, then try again.
      setTimeout(async () => {
        if (state.events !== source) return;
        try {
          await api("GET", "/api/v1/queue");
          connectEvents();
        } catch (error) {
          if (error.status !== 401) setTimeout(connectEvents, 3000);
        }
      }, 2000);
    }
  };
  on("job", (job) => upsertJob(job));
  on("job_removed", (data) => removeJob(data.mobilesd_job_id));
  on("image", (data) => {
    if (data.added) imageAdded(data.added);
    if (data.removed) imageRemoved(data.removed);
  });
  on("server", serverEvent);
  on("queue", queueState);
  on("download", downloadEvent);
  on("reset", () => {
    loadJobs();
    loadServers();
    loadDownloads();
    loadQueueState();
    if (state.galleryLoaded) loadGallery(true);
  });
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  setupGenerate();
  setupCivitai();
  setupQueue();
  setupGallery();
  setupServers();
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  try {
    state.servers = await api("GET", "/api/v1/servers");
  } catch (error) {
    if (error.status !== 401) {
      $("view-login").hidden = false;
      document.querySelector("#view-login p").textContent = error.message;
    }
    return;
  }
  state.signedIn = true;
  $("tabs").hidden = false;
  connectEvents();
  renderServers();
  fillServerSelect();
  loadModels();
  loadJobs();
  loadDownloads();
  loadQueueState();
  show(location.hash.slice(1) || "generate");
}

start();
