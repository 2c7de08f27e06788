"""PASTA Space: run the PASTA pipeline on an uploaded CT and look at the result.

Upload a NIfTI file (.nii / .nii.gz) or a zip of a DICOM series (or pick the bundled example),
press "Analyse", and get axial, coronal and sagittal views with lesion and organ overlays and
slice sliders, the lesion table, the structured report and its text, and downloads of the masks
(NIfTI in the upload's own geometry; DICOM SEG for DICOM input) and reports. Everything runs
locally and offline with the checkpoint this project trains and ships.

    python space/app.py                      # http://127.0.0.1:7860, shipped checkpoint
    python space/app.py --model DIR --port 7861 --max-upload-mb 256
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gradio as gr  # noqa: E402

from datasets_pasta.predict import LESION_TABLE_COLUMNS, load_pipeline, predict_case, resolve_model  # noqa: E402
from datasets_pasta.views import PLANE_AXIS, PLANES, WINDOWS, CaseViews  # noqa: E402
from modeling_pasta.image_io import ImageReadError  # noqa: E402

logger = logging.getLogger("space")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: Bundled example CTs (made by ``space/make_example.py``; reference masks and reports beside them).
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.nii.gz") if not p.name.endswith("_lesion.nii.gz"))
#: Default upload limit (MB); ``--max-upload-mb`` or ``$PASTA_SPACE_MAX_UPLOAD_MB`` change it.
MAX_UPLOAD_MB = int(os.environ.get("PASTA_SPACE_MAX_UPLOAD_MB", "512"))
ACCEPTED = (".nii", ".nii.gz", ".zip")
DISCLAIMER = (
    "Research software trained on **synthetic** lesions inserted into CT: not a medical device, not for "
    "diagnosis. Uploads are processed on this machine only."
)
OFFLINE_THEME = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


class Analyser:
    """Holds the pipeline (loaded once, on first use) and runs one upload at a time through it."""

    def __init__(self, model: str | Path | None = None, *, max_upload_mb: int = MAX_UPLOAD_MB):
        self.model = resolve_model(model)
        self.max_upload_mb = max_upload_mb
        self._pipeline = None
        self._lock = threading.Lock()
        self.workdir = Path(tempfile.mkdtemp(prefix="pasta-space-"))

    @property
    def pipeline(self):
        with self._lock:
            if self._pipeline is None:
                self._pipeline = load_pipeline(self.model)
            return self._pipeline

    def check_upload(self, path: str | Path | None) -> Path:
        """The upload's path, or a :class:`gr.Error` saying what is wrong with it."""
        if not path:
            raise gr.Error("Upload a CT (NIfTI .nii/.nii.gz or a zip of a DICOM series) or pick the example.")
        path = Path(path)
        if not path.name.lower().endswith(ACCEPTED):
            raise gr.Error(f"{path.name}: not a NIfTI (.nii, .nii.gz) or zip file.")
        size_mb = path.stat().st_size / 2**20
        if size_mb > self.max_upload_mb:
            raise gr.Error(f"{path.name}: {size_mb:.0f} MB is over the {self.max_upload_mb} MB upload limit.")
        return path

    def analyse(self, path: str | Path | None, progress: gr.Progress | None = None) -> tuple[CaseViews, Any]:
        """Predict one upload; returns the views and the :class:`~datasets_pasta.predict.CaseResult`."""
        path = self.check_upload(path)
        pipeline = self.pipeline
        if progress is not None:
            progress(0.2, desc=f"segmenting and reporting {path.name}")
        folder = Path(tempfile.mkdtemp(dir=self.workdir)) / "result"
        try:
            result = predict_case(pipeline, path, folder, model_name=str(self.model))
        except ImageReadError as err:  # unreadable, not CT, bad geometry: tell the user, keep serving
            raise gr.Error(_upload_message(str(err), path)) from err
        prediction, volume = result.prediction, result.volume
        if progress is not None:
            progress(0.9, desc="rendering")
        views = CaseViews.from_arrays(volume.array, volume.affine, prediction.lesion_mask, prediction.organ_map)
        return views, result


def _upload_message(message: str, path: Path) -> str:
    """Error text naming the upload by its own name, not the server's temporary path."""
    return message.replace(str(path), path.name)


def render_all(views: CaseViews | None, positions: Sequence[int], window: str, overlays: Sequence[str]):
    if views is None:
        return [None] * len(PLANES)
    return [
        views.render(plane, int(index), window=window, organs="organs" in overlays, lesions="lesions" in overlays)
        for plane, index in zip(PLANES, positions)
    ]


def report_markdown(result) -> str:
    """The report text (structured report rendered as prose) and the generated report, as Markdown."""
    parts = []
    summary = result.folder / "report.txt"
    if summary.is_file():
        parts.append("#### Structured report\n" + summary.read_text().strip().replace("\n", "\n\n"))
    generated = result.folder / "generated_report.txt"
    if generated.is_file():
        parts.append("#### Generated report (text decoder)\n" + generated.read_text().strip())
    if not parts:
        parts.append("No report: the model has no classification or report part.")
    return "\n\n".join(parts)


def build_demo(analyser: Analyser, *, examples: Sequence[Path] = EXAMPLES) -> gr.Blocks:
    """The Space's Blocks: upload / example -> views, sliders, lesion table, report, downloads."""
    with gr.Blocks(title="PASTA: pan-tumor CT analysis") as demo:
        gr.Markdown("# PASTA: lesion segmentation and structured report for CT\n" + DISCLAIMER)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(
                    label="CT: NIfTI (.nii, .nii.gz) or zip of a DICOM series",
                    file_types=[".nii", ".gz", ".zip"],
                    elem_id="upload",
                )
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload], label="Example (synthetic)")
                run = gr.Button("Analyse", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                window = gr.Radio(list(WINDOWS), value="soft tissue", label="Window")
                overlays = gr.CheckboxGroup(["lesions", "organs"], value=["lesions", "organs"], label="Overlays")
                status = gr.Markdown("", elem_id="status")
        images, sliders = [], []
        with gr.Row():
            for plane in PLANES:
                with gr.Column():
                    images.append(gr.Image(label=plane, type="numpy", interactive=False, elem_id=f"view-{plane}"))
                    sliders.append(gr.Slider(0, 1, value=0, step=1, label=f"{plane} slice", elem_id=f"slider-{plane}"))
        table = gr.Dataframe(headers=list(LESION_TABLE_COLUMNS), label="Lesions", interactive=False, elem_id="lesions")
        with gr.Row():
            report_text = gr.Markdown(elem_id="report")
            report_json = gr.JSON(label="Structured report (JSON)")
        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")

        def on_run(path, window_name, overlay_names, progress=gr.Progress()):
            views, result = analyser.analyse(path, progress)
            centre = views.lesion_center()
            positions = [centre[PLANE_AXIS[plane]] for plane in PLANES]
            slider_updates = [
                gr.update(maximum=views.size(plane) - 1, value=position) for plane, position in zip(PLANES, positions)
            ]
            rows = [[row[c] for c in LESION_TABLE_COLUMNS] for row in result.lesions]
            report = result.prediction.report
            found = f"{len(rows)} lesion(s)" if rows else "no lesion"
            message = f"**{Path(path).name}**: {found} found in {result.seconds:.1f} s."
            return (
                views,
                *render_all(views, positions, window_name, overlay_names),
                *slider_updates,
                rows,
                report_markdown(result),
                report.to_dict() if report is not None else {},
                [str(p) for p in result.files.values() if p.is_file()],
                message,
            )

        run.click(
            on_run,
            inputs=[upload, window, overlays],
            outputs=[state, *images, *sliders, table, report_text, report_json, downloads, status],
            api_name="analyse",
            concurrency_limit=1,
            show_progress_on=[status, images[0]],
        )
        for plane, image, slider in zip(PLANES, images, sliders):
            slider.change(
                lambda views, index, window_name, overlay_names, plane=plane: None
                if views is None
                else views.render(
                    plane, int(index), window=window_name, organs="organs" in overlay_names,
                    lesions="lesions" in overlay_names,
                ),
                inputs=[state, slider, window, overlays],
                outputs=image,
                api_name=False,
                show_progress="hidden",
            )
        for control in (window, overlays):
            control.change(
                lambda views, w, o, *positions: render_all(views, positions, w, o),
                inputs=[state, window, overlays, *sliders],
                outputs=images,
                api_name=False,
            )
    return demo


def launch(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: int = MAX_UPLOAD_MB,
    block: bool = True,
) -> gr.Blocks:
    """Build the Space and serve it (queued: one analysis at a time, up to 16 waiting)."""
    analyser = Analyser(model, max_upload_mb=max_upload_mb)
    analyser.pipeline  # load before serving: the first user does not wait for it
    demo = build_demo(analyser)
    demo.queue(default_concurrency_limit=1, max_size=16)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{max_upload_mb}mb",
        ssr_mode=False,
        prevent_thread_lock=not block,
        theme=gr.themes.Default(**OFFLINE_THEME),
        footer_links=["api"],
        show_error=True,
        quiet=not block,
    )
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint or pipeline folder (default: the shipped one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help=f"upload size limit in MB (default: {MAX_UPLOAD_MB})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    launch(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)


if __name__ == "__main__":
    main()

