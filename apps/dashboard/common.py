"""What every page shares: the sidebar's choices, the cached model, the error guard, "Save run"."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

import workbench
from workbench.errors import InputError, WorkbenchError
from workbench.experiments import EXPERIMENTS, config_from_dict, run_experiment, with_tokens
from workbench.experiments.figures import show_token
from workbench.experiments.prompt_sets import PROMPT_SETS, leading_space_hint
from workbench.models.bundled import bundled_names
from workbench.models.config import PRESETS
from workbench.runs import RunRecord, default_runs_root

DEFAULT = "default"
LOCAL_PATH = "a local path"
DTYPES = ("float32", "float16", "bfloat16")
IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
IOI_ANSWER, IOI_WRONG = " Mary", " John"
# How to get GPT-2, ending the default model's notice: the dashboard's ways, not the scripts' --model.
DASHBOARD_GET_GPT2 = ("To use GPT-2 124M, run once with network access: python -c \"import workbench; "
                      "workbench.load_model('gpt2')\" (it is then cached), or choose 'a local path' in the sidebar, "
                      "open the dashboard with ?model=/path/to/a/gpt2/directory in the URL, or start it with "
                      "WORKBENCH_MODEL=/path/to/a/gpt2/directory.")

# Keys of page widgets start with "p.": their values are kept while another page is shown.
KEEP = "p."

ModelKey = tuple[str, str, str]  # (name or absolute path, device, dtype): what load_model gets


@dataclass
class Session:
    """The sidebar's choices and the model they load (None when it failed to load)."""

    model_name: str
    device: str
    dtype: str
    prompt: str
    runs_root: Path
    model: workbench.GPT | None
    notice: str | None
    error: str | None = None  # why the model did not load

    @property
    def key(self) -> ModelKey:
        return (self.model_name, self.device, self.dtype)

    def config_fields(self) -> dict:
        """The fields every experiment config takes, for this model."""
        return {"model": self.model_name, "device": self.device, "dtype": self.dtype}


# ----------------------------------------------------------------------------- the model
@st.cache_resource(show_spinner=False)
def default_model() -> tuple[str, str]:
    """(name, notice) of the default model, asked once per server (it may probe the network)."""
    return workbench.resolve_default_model(get_gpt2=DASHBOARD_GET_GPT2)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def load_model(name: str, device: str, dtype: str) -> workbench.GPT:
    return workbench.load_model(name, device=device, dtype=dtype)


@st.cache_resource
def model_lock(name: str, device: str, dtype: str) -> threading.Lock:
    """One lock per model: hooks are attached to the shared model while a method runs, so two
    browser tabs must not run methods on it at the same time."""
    return threading.Lock()


@contextlib.contextmanager
def using_model(key: ModelKey) -> Iterator[workbench.GPT]:
    """The cached model for `key`, held for this session while the block runs."""
    model = load_model(*key)
    with model_lock(*key):
        yield model


# ----------------------------------------------------------------------------- errors
@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show an exception raised in the block as a message in the page, not a traceback."""
    try:
        yield
    except (WorkbenchError, ValueError, KeyError) as e:
        st.error(describe(e), icon=":material/error:")
    except Exception as e:  # a bug, or out of memory: still a message, the details folded away
        st.error(f"{type(e).__name__}: {e}", icon=":material/error:")
        with st.expander("Details (for a bug report)"):
            st.code("".join(traceback.format_exception(e)), language=None)


def describe(e: BaseException) -> str:
    """An exception as one readable message."""
    if isinstance(e, KeyError) and e.args:  # KeyError's str() is the repr of its message
        return str(e.args[0])
    if isinstance(e, (WorkbenchError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- the sidebar
def keep_page_widgets() -> None:
    """Streamlit forgets a widget's value when a run does not draw it (another page is shown);
    writing the values back makes them plain session state, which it keeps."""
    for key in list(st.session_state):
        if isinstance(key, str) and key.startswith(KEEP):
            st.session_state[key] = st.session_state[key]


def state(key: str, default) -> str:
    """`key`, with `default` as its value until the user changes it. Widgets kept across pages
    take their default from here, not from a `value=` argument (Streamlit warns about both)."""
    st.session_state.setdefault(key, default)
    return key


def initial_model() -> str | None:
    """The model asked for by ?model=... in the URL or the WORKBENCH_MODEL environment variable."""
    return st.query_params.get("model") or os.environ.get("WORKBENCH_MODEL") or None


def sidebar() -> Session:
    """Model, device, dtype, prompt and runs folder; loads the model (cached)."""
    bar = st.sidebar
    default_name, default_notice = default_model()
    choices = [DEFAULT, *PRESETS, *[n for n in bundled_names() if n not in PRESETS], LOCAL_PATH]
    if "p.model" not in st.session_state:
        wanted = initial_model()
        if wanted in choices:
            st.session_state["p.model"] = wanted
        elif wanted:
            st.session_state["p.model"], st.session_state["p.model_path"] = LOCAL_PATH, wanted
    choice = bar.selectbox(
        "Model", choices, key="p.model",
        format_func=lambda c: f"default ({default_name})" if c == DEFAULT else c,
        help="GPT-2 sizes come from the Hugging Face cache (or the hub, if reachable); the bundled model "
             "always works offline. A local path: a Hugging Face-format directory, a workbench model "
             "directory or a nanoGPT ckpt.pt.",
    )
    if choice == LOCAL_PATH:
        path = bar.text_input("Model path", key="p.model_path", placeholder="/path/to/model_dir")
        name = str(Path(path).expanduser().resolve()) if path.strip() else ""
    else:
        name = default_name if choice == DEFAULT else choice
    devices = ["cpu"] + [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    wanted_device = os.environ.get("WORKBENCH_DEVICE")
    col1, col2 = bar.columns(2)
    device = col1.selectbox("Device", devices, key="p.device",
                            index=devices.index(wanted_device) if wanted_device in devices else int(len(devices) > 1))
    dtype = col2.selectbox("Dtype", DTYPES, key="p.dtype")
    prompt = bar.text_area("Prompt", key=state("p.prompt", IOI_CLEAN), height=100,
                           help="Used by the model, logit lens and attention pages (a BOS token is prepended).")
    runs_root = bar.text_input("Runs folder", key=state("p.runs_root", str(default_runs_root())),
                               help="Where 'Save run' records runs and the Runs page looks for them.")

    model, notice, error = None, None, None
    if not name:
        error = "Enter the path of a model directory or checkpoint in the sidebar."
    else:
        try:
            model = load_model(name, device, dtype)
        except Exception as e:  # shown on every page that needs the model
            error = f"Could not load model {name!r}: {describe(e)}"
            bar.error("The model did not load (see the page).", icon=":material/error:")
        if choice == DEFAULT:
            notice = default_notice
    if model is not None:
        c = model.cfg
        bar.caption(f"{model.name}: {c.n_layer} layers, {c.n_head} heads, d_model {c.d_model}, "
                    f"context {c.block_size}, {device}, {dtype}")
    session = Session(name, device, dtype, prompt, Path(runs_root or "runs"), model, notice, error)
    st.session_state["_session"] = session
    return session


def session() -> Session:
    """The sidebar's choices for this run (the sidebar runs before every page)."""
    return st.session_state["_session"]


def require_model(s: Session) -> workbench.GPT:
    """The model, or stop the page with a message when it did not load."""
    if s.model is None:
        st.error(s.error or "This page needs a model: choose one that loads in the sidebar.", icon=":material/error:")
        st.stop()
    return s.model


def model_card(name: str) -> dict | None:
    """The model_card.json of a bundled model or a model directory, if it has one."""
    from workbench.models.bundled import BUNDLED_DIR

    for folder in (BUNDLED_DIR / name, Path(name)):
        try:
            return json.loads((folder / "model_card.json").read_text())
        except (OSError, ValueError):
            continue
    return None


# ----------------------------------------------------------------------------- tokens
def token_table(model: workbench.GPT, text: str) -> pd.DataFrame:
    """One row per token of `text` (BOS first): position, token, id."""
    ids = model.prepare_tokens(text)[0].tolist()
    return pd.DataFrame({"pos": range(len(ids)), "token": [show_token(t) for t in model.to_str_tokens(text)],
                         "id": ids})


def single_token(model: workbench.GPT, text: str, what: str) -> int:
    """The id of a one-token string; InputError naming `what` otherwise."""
    try:
        return model.to_single_token(text)
    except workbench.InputError as e:
        raise workbench.InputError(f"{what}: {e}{leading_space_hint(model, text)}") from None


def require_prompt(s: Session) -> str:
    """The sidebar's prompt; InputError when it has no text (methods would run on BOS alone)."""
    if not s.prompt.strip():
        raise InputError("The prompt is empty: type some text in the sidebar's Prompt box.")
    return s.prompt


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def table(frame: pd.DataFrame, **kwargs) -> None:
    """A dataframe without its constant columns (method, metric, detector ...), which a caption
    names once instead; every row in view up to 16 rows."""
    constant = [c for c in frame.columns if len(frame) > 1 and frame[c].nunique(dropna=False) == 1
                and c not in ("layer", "head", "pos")]
    if constant:
        st.caption("Every row: " + ", ".join(f"{c} = {frame[c].iloc[0]}" for c in constant))
    kwargs.setdefault("height", 38 + 35 * min(len(frame), 16))
    st.dataframe(frame.drop(columns=constant), hide_index=True, width="stretch", **kwargs)


# ----------------------------------------------------------------------------- clicks on a chart
def selected_labels(event) -> list[str]:
    """The labels (customdata) of the points selected on a plotly chart: its `on_select` event, as
    st.plotly_chart returns it or session state holds it under the chart's key; unlabelled points
    (e.g. block 0 on a receiver grid) are left out."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    return [p["customdata"] for p in points if isinstance(p.get("customdata"), str)]


def toggle_clicked(names: list[str], selected: list[str], seen: list[str]) -> list[str]:
    """`names` with each newly selected label (in `selected`, not in `seen`: the chart's selection
    when it was last drawn) removed if present and appended otherwise. A selection that did not
    change, or only lost points, changes nothing: a name removed elsewhere is not put back."""
    names = list(names)
    for label in selected:
        if label not in seen:
            names = [n for n in names if n != label] if label in names else names + [label]
    return names


def chart_selection(key: str) -> tuple[list[str], list[str]]:
    """The chart `key`'s selection from the last run (read before the widgets it changes are drawn)
    and its selection when it was last drawn (see `remember_selection`)."""
    return selected_labels(st.session_state.get(key)), st.session_state.get(f"{key}.seen", [])


def remember_selection(key: str, event) -> None:
    """Remember the chart `key`'s selection as this run drew it (a chart whose figure changed is a
    fresh one, with nothing selected), so the next run acts only on clicks made after it."""
    st.session_state[f"{key}.seen"] = selected_labels(event)


# ----------------------------------------------------------------------------- prompt sets
LENGTH_RULES = {"error": "one length only (else an error naming the row)",
                "pad": "pad (each prompt read at its own last token)"}
GREY_HELP = ("Cover the cells whose effect's bootstrap interval over the prompts includes 0: the prompts do not "
             "tell whether patching or ablating there raises or lowers the metric.")


# What each prompt set is, for the Prompts radio's help (only the sets a page offers are named).
PROMPT_SET_HELP = {
    "induction": "Induction: [BOS] + r + r for random tokens r, corrupted [BOS] + r' + r.",
    "ioi": "IOI: Wang et al.'s templates, corrupted with three other names.",
    "greater_than": "Greater-than: Hanna et al.'s year prompts (GPT-2).",
    "custom": "Custom: the prompt and tokens typed below.",
    "file": "File: the prompt file uploaded below.",
}


def open_on_preset(page: str, s: Session, preset: str) -> bool:
    """The first time `page` is drawn for a model, set its Prompts radio (`p.<page>.source`) to
    `preset`, the task the model can do (`default_prompt_set`); True then. Call it before
    `opened_run`, whose inputs win (or have `opened_run`'s fill set `<page>.defaults_for`)."""
    if st.session_state.get(f"{page}.defaults_for") == s.model_name:
        return False
    st.session_state[f"{page}.defaults_for"] = s.model_name
    st.session_state[f"p.{page}.source"] = preset
    return True


@dataclass
class PromptSetInputs:
    """What a page's prompt-set widgets hold (`prompt_set_form`)."""

    source: str
    n_prompts: int
    seq_len: int
    seed: int
    clean: str
    corrupted: str | None  # None on a page that runs the clean prompts only
    answer: str
    wrong: str
    upload: object  # the uploaded prompt file (Streamlit's UploadedFile), or None
    length_rule: str

    def fields(self, s: Session) -> dict | None:
        """The experiment config's prompt-set fields: the chosen set and its seed, and the custom
        pair, the prompt file (saved under the runs folder, `saved_upload`) or the sampling
        options. None, with the reason shown, when the file set has no file."""
        fields = {"prompt_set": self.source, "seed": int(self.seed)}
        if self.source == "custom":
            fields.update(clean_prompts=[self.clean], answers=[self.answer], wrong_answers=[self.wrong])
            if self.corrupted is not None:
                fields["corrupted_prompts"] = [self.corrupted]
            return fields
        if self.source != "file":
            return {**fields, "n_prompts": int(self.n_prompts), "seq_len": int(self.seq_len)}
        with guard():
            return {**fields, "prompts": saved_upload(s, self.upload), "length_rule": self.length_rule}
        return None


def prompt_set_form(page: str, model, preset: str, *, defaults, sets=tuple(PROMPT_SETS), corrupted: str | None =
                    "Corrupted prompt (custom)", most: int = 256, sets_help: str = "",
                    seed_help: str | None = None) -> PromptSetInputs:
    """The prompt-set widgets of a page's form (keys `p.<page>.*`, `<page>.upload`): the prompt set,
    its sampling options (from `defaults`, a config of the page's experiment), the custom prompt
    pair with its answer and wrong tokens, and a prompt file (JSONL, CSV or Parquet) with its
    length rule. What truly differs between pages: the `sets` offered; `corrupted`, the label of
    the corrupted prompt (None: the page runs the clean prompts only); `most` prompts;
    `sets_help`, said after the sets' own help, and `seed_help`. `preset`: the set the model's task
    takes (`default_prompt_set`). Draw it inside the page's `st.form`."""
    source = st.radio("Prompts", list(sets), format_func=PROMPT_SETS.get, horizontal=True,
                      key=state(f"p.{page}.source", preset),
                      help=" ".join([f"A preset per task; this model's is {preset}.",
                                     *(PROMPT_SET_HELP[name] for name in sets), sets_help]).strip())
    c1, c2, c3 = st.columns(3)
    sampled = ", ".join(PROMPT_SETS[name].split(":")[0] for name in sets if name not in ("custom", "file"))
    n_prompts = c1.number_input(f"prompts ({sampled})", 1, most, key=state(f"p.{page}.n_prompts", defaults.n_prompts))
    seq_len = c2.number_input("tokens per copy (induction)", 2, max(2, (model.cfg.block_size - 1) // 2),
                              key=state(f"p.{page}.seq_len", defaults.seq_len))
    seed = c3.number_input("seed", 0, 2**31 - 1, key=state(f"p.{page}.seed", defaults.seed), help=seed_help)
    if corrupted is None:
        clean = st.text_input("Prompt (custom)", key=state(f"p.{page}.clean", IOI_CLEAN))
    else:
        c1, c2 = st.columns(2)
        clean = c1.text_input("Clean prompt (custom)", key=state(f"p.{page}.clean", IOI_CLEAN))
        corrupted = c2.text_input(corrupted, key=state(f"p.{page}.corrupted", IOI_CORRUPTED),
                                  help="Must have as many tokens as the clean prompt.")
    c1, c2 = st.columns(2)
    answer = c1.text_input("Answer token (custom)", key=state(f"p.{page}.answer", IOI_ANSWER),
                           help="The prompt's correct next token, one token (mind the leading space).")
    wrong = c2.text_input("Wrong token (custom)", key=state(f"p.{page}.wrong", IOI_WRONG))
    file_column, rule_column = st.columns([2, 1])
    upload = file_column.file_uploader(
        "Prompt file (file)", type=["jsonl", "csv", "parquet"], key=f"{page}.upload",
        help="One prompt pair per row: clean (or clean_ids), corrupted (or corrupted_ids), answer (or answer_id), "
             "wrong (or wrong_id), optional group or template (workbench.methods.datasets).")
    length_rule = rule_column.selectbox(
        "Prompts of different lengths", list(LENGTH_RULES), format_func=LENGTH_RULES.get,
        key=state(f"p.{page}.length_rule", defaults.length_rule))
    return PromptSetInputs(source, n_prompts, seq_len, seed, clean, corrupted, answer, wrong, upload, length_rule)


def submit(page: str, request) -> None:
    """The page's form was sent: keep `request` (what the page computes from: `fields_key` of its
    experiment's fields) in `<page>.request` for this and later runs, and leave an opened run."""
    st.session_state[f"{page}.request"] = request
    close_run()


def form_request(page: str, opened: RunRecord | None, *, key: str, hint: str):
    """What comes below a page's form: the opened run shown from its record (`show_opened_run`; the
    page stops there), or `hint` until the form is first sent (the page stops), else the request
    the form last sent (`submit`)."""
    if opened is not None and RUN_PARAM in st.query_params:
        with guard():
            show_opened_run(opened, key=key)
        st.stop()
    request = st.session_state.get(f"{page}.request")
    if request is None:
        st.info(hint, icon=":material/info:")
        st.stop()
    return request


def saved_upload(s: Session, upload) -> str:
    """An uploaded prompt file, saved under the runs folder by its content hash (the run's config
    records this path; replay needs no file, the record holds the token ids)."""
    import hashlib

    if upload is None:
        raise InputError("Choose a prompt file (JSONL, CSV or Parquet) to upload, or another prompt set.")
    data = upload.getvalue()
    folder = s.runs_root / "_prompts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(data).hexdigest()[:16] + Path(upload.name).suffix.lower())
    if not path.exists():
        path.write_bytes(data)
    return str(path.resolve())


# ----------------------------------------------------------------------------- experiments
def fields_key(fields: dict) -> str:
    """A page's experiment fields as a hashable, canonical cache key."""
    return json.dumps(fields, sort_keys=True)


@st.cache_data(show_spinner=False, max_entries=16)
def compute(key: ModelKey, experiment: str, fields: str, text: str):
    """(config with its token ids, result) of `experiment` for a page's fields (JSON), on the
    model `key`: the page builds the experiment's config and runs its `compute`, so what it shows
    is what Save run records. A progress bar moves while it runs."""
    with using_model(key) as model:
        config = experiment_config(key, experiment, fields, model)
        with progress_bar(text) as progress:
            return config, EXPERIMENTS[experiment].compute(config, model, progress=progress)


def experiment_config(key: ModelKey, experiment: str, fields: str, model):
    """The experiment's config for a page's fields (JSON) on the model `key`, resolved for the
    model and with its token ids: what the experiment computes from and Save run records."""
    exp = EXPERIMENTS[experiment]
    config = config_from_dict(exp.config, {**dict(zip(("model", "device", "dtype"), key)), **json.loads(fields)},
                              source="the page's inputs")
    return with_tokens(exp, config, model)


@contextlib.contextmanager
def progress_bar(text: str) -> Iterator[object]:
    """A progress bar while a library method runs; yields the callback `progress(done, total)`
    to pass it. Call it inside the `st.cache_data` function: st.cache_data replays the elements a
    cached function drew, and a bar drawn outside it could not be replayed."""
    bar = st.progress(0.0, text=text)

    def report(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text} {done} / {total}")

    try:
        yield report
    finally:
        bar.empty()


# ----------------------------------------------------------------------------- save run
def save_run(s: Session, experiment: str, config, result, *, key: str, identity: str, note: str | None = None) -> None:
    """The "Save run" box: record the result on screen (`result`, computed from `config`) with the
    experiment the scripts use, and show the command lines that re-run and replay it.

    The "Saved run" notice belongs to the result it saved: it is kept with `identity` (what the
    result was computed from) and shown only while the page shows that same result."""
    identity = f"{s.key}|{identity}"
    with st.container(border=True):
        if note:
            st.caption(note)
        col1, col2 = st.columns([3, 1], vertical_alignment="bottom")
        name = col1.text_input("Run name (optional)", key=f"p.{key}.run_name",
                               help="Appended to the run folder's name.")
        if col2.button("Save run", key=f"save.{key}", icon=":material/save:", width="stretch"):
            with guard(), st.spinner("Recording the run ..."):
                with using_model(s.key) as model:
                    run = run_experiment(experiment, config, model=model, root=s.runs_root,
                                         name=name.strip() or None, computed=result)
                st.session_state[f"saved.{key}"] = (identity, str(run.path),
                                                    (run.path / "command").read_text().strip())
        saved = st.session_state.get(f"saved.{key}")
        if saved and saved[0] == identity:
            _, path, command = saved
            st.success(f"Saved run {path}", icon=":material/check:")
            st.caption("Re-run it from a shell:")
            st.code(command, language="bash")
            st.caption("Replay it and compare with the record:")
            st.code(f"python -m workbench replay {shlex.quote(path)}", language="bash")
            download_buttons(path, key=key)


# ----------------------------------------------------------------------------- recorded runs
# The page of each experiment, for "Open" on the Runs page (an experiment without a page opens
# nowhere; its runs are still shown, exported and compared on the Runs page).
PAGES = {"logit_lens": "dashboard/logit_lens.py", "attention_heads": "dashboard/attention.py",
         "activation_patching": "dashboard/patching.py", "ablate_heads": "dashboard/ablation.py",
         "dla": "dashboard/dla.py", "path_patching": "dashboard/path_patching.py",
         "circuit": "dashboard/circuit.py"}
RUN_PARAM = "run"  # ?run=<run folder> in the URL: the page shows that run from its record


def download_buttons(path: str | Path, *, key: str) -> None:
    """"Download script" and "Download notebook" for a recorded run: `workbench export` of it, the
    same files (the one helper every page and the Runs page call)."""
    from workbench.experiments.exporting import SUFFIX, export_run, render

    path = Path(path)
    with guard():
        export = export_run(path)
        cols = st.columns(2)
        for col, (to, label, icon, mime) in zip(cols, (
                ("script", "Download script", ":material/code:", "text/x-python"),
                ("notebook", "Download notebook", ":material/menu_book:", "application/x-ipynb+json"))):
            col.download_button(label, render(export, to), file_name=f"{path.parent.name}_{path.name}{SUFFIX[to]}",
                                mime=mime, key=f"download.{to}.{key}", icon=icon, on_click="ignore",
                                help=f"The run as a {to} that runs as it is, offline (`workbench export --to {to}`): "
                                     "the model by name (weights checked), the exact token ids, the library call "
                                     "with every option; RECORD = True in it records a new run.")


def open_run_from_url() -> None:
    """Before the sidebar is drawn: when the URL names a run (?run=<folder>) not yet opened in this
    session, set the sidebar's model, device, dtype (and prompt) to the run's, and leave the
    page's own inputs to `opened_run`."""
    run = st.query_params.get(RUN_PARAM)
    if not run or st.session_state.get("opened.sidebar") == run:
        return
    st.session_state["opened.sidebar"] = run
    from workbench.runs import RecordError, load_run

    try:
        config = load_run(run).config
    except RecordError as e:
        st.session_state["opened.error"] = f"Cannot open the run in the URL: {e}"
        return
    st.session_state.pop("opened.error", None)
    name = config.get("model")
    choices = [*PRESETS, *bundled_names()]
    if name in choices:
        st.session_state["p.model"] = name
    elif name:
        st.session_state["p.model"], st.session_state["p.model_path"] = LOCAL_PATH, name
    if config.get("device") == "cpu" or (str(config.get("device")).startswith("cuda") and torch.cuda.is_available()):
        st.session_state["p.device"] = config["device"]
    if config.get("dtype") in DTYPES:
        st.session_state["p.dtype"] = config["dtype"]
    if isinstance(config.get("prompt"), str):
        st.session_state["p.prompt"] = config["prompt"]


def opened_run(experiment: str, fill) -> RunRecord | None:
    """The run this page was opened on (?run=<folder> in the URL), if it is of `experiment`; the
    first time, the page's widgets are set to its inputs: `fill(config)` gives {widget key: value}.
    Call it before the page draws its widgets."""
    from workbench.runs import RecordError, load_run

    error = st.session_state.get("opened.error")
    if error:
        st.error(error, icon=":material/error:")
    run = st.query_params.get(RUN_PARAM)
    if not run:
        return None
    try:
        record = load_run(run)
    except RecordError:
        return None  # the message is shown above
    if record.experiment != experiment:
        return None
    if st.session_state.get("opened.page") != run:
        st.session_state["opened.page"] = run
        from workbench.experiments.core import with_current_names

        config = with_current_names(EXPERIMENTS[experiment].config, record.config)
        st.session_state.update(fill(config))
    return record


def prompt_set_widgets(page: str, config: dict) -> dict:
    """The widgets of `prompt_set_form` (keys `p.<page>.*`) set to a config's prompt set (the first
    pair of a custom set: the pages take one; a prompt file cannot be put back in its upload)."""
    values = {f"p.{page}.source": config["prompt_set"], f"p.{page}.n_prompts": int(config["n_prompts"]),
              f"p.{page}.seq_len": int(config["seq_len"]), f"p.{page}.seed": int(config["seed"])}
    if config.get("length_rule"):
        values[f"p.{page}.length_rule"] = config["length_rule"]
    for widget, name in (("clean", "clean_prompts"), ("corrupted", "corrupted_prompts"), ("answer", "answers"),
                         ("wrong", "wrong_answers")):
        if config.get(name):
            values[f"p.{page}.{widget}"] = config[name][0]
    return values


def close_run() -> None:
    """Leave the opened run: the page computes from its inputs again (the URL loses ?run=)."""
    if RUN_PARAM in st.query_params:
        del st.query_params[RUN_PARAM]
    for key in ("opened.sidebar", "opened.page", "opened.error"):
        st.session_state.pop(key, None)


def show_opened_run(record, *, key: str) -> None:
    """The opened run's results from its record (nothing is computed), with its downloads; the
    page stops after this until "Compute again" is pressed."""
    st.info(f"Showing the recorded run `{record.path}` ({record.created}): the inputs above are the run's, the "
            "results below are read from its record, not computed. Press Compute again to run the experiment "
            "on these inputs.", icon=":material/history:")
    if st.button("Compute again", key=f"open.close.{key}", icon=":material/play_arrow:"):
        close_run()
        st.rerun()
    show_record(record, key=key)
    download_buttons(record.path, key=f"opened.{key}")


def show_record(record, *, key: str) -> None:
    """A recorded run's summary, figures (drawn by its experiment from the recorded tensors and
    tables) and tables."""
    from workbench.experiments.figures import generic_figures

    summary = record.path / "summary.txt"
    if summary.is_file():
        st.code(summary.read_text(), language=None)
    tensors, tables = record.tensors(), record.tables()
    experiment = EXPERIMENTS.get(record.experiment)
    draw = experiment.figures if experiment is not None and experiment.figures is not None else generic_figures
    for i, fig in enumerate(draw(tensors, tables)):
        st.plotly_chart(fig, width="stretch", key=f"record.{key}.{i}")
    for name, frame in tables.items():
        with st.expander(f"Table: {name} ({plural(len(frame), 'row')})"):
            table(frame)
