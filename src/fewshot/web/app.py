"""The web app behind ``fewshot serve``: four explorers' pages and the JSON API they call.

    GET  /                         index; /protonet, /maml, /omniglot, /incontext: the explorers (static HTML,
                                   JS, CSS; each page's body in static/NAME.html, the shared head in page.html)
    GET  /api/info                 how the shipped models were trained and what they measured
    GET  /api/protonet/task        a 2-D Gaussian task: ?ways=2..10&shots=1..10&queries=0..20&seed=
    POST /api/protonet/classify    prototypes, decision-region grid, probabilities of clicked points
    GET  /api/maml/task            a sinusoid task: ?shots=1..50&seed=  (support points and its true curve)
    POST /api/maml/adapt           MAML and pretrained predictions after 0..steps inner steps
    POST /api/maml/np              0..100 points -> the attentive neural process's predictive mean and standard
                                   deviation on the same grid (its prior with no points)
    GET  /api/omniglot/support     ?ways=2..10&seed=: one drawing of each of `ways` held-out characters
    POST /api/omniglot/classify    a drawing (PNG data URL or grey pixel rows) -> class probabilities
    GET  /api/incontext/task       a noisy line: ?shots=1..20&seed=  (its points and its slope)
    POST /api/incontext/predict    0..20 points -> the transformer's in-context prediction, least squares',
                                   ridge's and one gradient step's lines, on a grid of x in [-3, 3]

Every input is validated by pydantic (sizes, ranges, finite numbers) or by the image decoder; what fails gets
a 4xx answer ``{"error": "<one line saying what to change>", ...}``, never a 500. POST bodies are JSON sent
with ``Content-Type: application/json``: another content type gets 415 on every POST endpoint, a body that is
not valid JSON 422 with the parser's line and column (see :mod:`fewshot.web.bodies`). Handlers are plain
functions, which FastAPI runs in a thread pool, so requests are served concurrently; the models are shared
read-only and each is run under its own lock (see :mod:`fewshot.web.models`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

import fewshot
from fewshot.tasks.episodes import Split
from fewshot.web import drawing, explorers
from fewshot.web.bodies import BodyLimit, json_content_type, parse_error, validation_message
from fewshot.web.models import WEB_DATA, WebModels, web_models

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/protonet": "protonet.html", "/maml": "maml.html", "/omniglot": "omniglot.html",
         "/incontext": "incontext.html"}  # fmt: skip
MAX_BODY = 5_000_000  # bytes of a request body (a drawing's data URL is at most drawing.MAX_DATA_URL)
MAX_SUPPORT = 100  # support points per request
MAX_SEED = 2**31 - 1
COORDINATE = 100.0  # |x|, |y| of a 2-D point
Y_LIMIT = 10.0  # |y| of a sinusoid support point (amplitudes are at most 5), and of an in-context point
MAX_EXAMPLES = 20  # in-context points: the shipped transformer reads prompts of at most 21 (20 and the query)


def Int(low: int, high: int) -> Any:  # noqa: N802 (reads as a type in the models below)
    """A JSON integer in ``low..high`` (``true``, ``5.0`` and ``"5"`` are refused, not converted)."""
    return Annotated[int, Field(ge=low, le=high, strict=True)]


def Float(low: float, high: float) -> Any:  # noqa: N802
    """A finite JSON number in ``[low, high]`` (``true`` and ``"1.5"`` are refused; NaN and Infinity too)."""
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False, strict=True)]


Coordinate = Float(-COORDINATE, COORDINATE)
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]


class Strict(BaseModel):
    """Request bodies: unknown fields are refused (a misspelt field would otherwise be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Support2D(Strict):
    x: Annotated[list[Point], Field(min_length=1, max_length=MAX_SUPPORT)]
    y: Annotated[list[Int(0, 9)], Field(min_length=1, max_length=MAX_SUPPORT)]


class ProtoNetRequest(Strict):
    ways: Int(2, 10)
    support: Support2D
    points: Annotated[list[Point], Field(max_length=1000)] = []
    bounds: Annotated[list[Coordinate], Field(min_length=4, max_length=4)] = [-6.0, 6.0, -6.0, 6.0]
    resolution: Int(10, 200) = 100

    @model_validator(mode="after")
    def consistent(self) -> ProtoNetRequest:
        if len(self.support.x) != len(self.support.y):
            raise ValueError(
                f"support.x has {len(self.support.x)} points but support.y {len(self.support.y)} labels"
            )
        missing = sorted(set(range(self.ways)) - set(self.support.y))
        if missing:
            raise ValueError(
                f"class {missing[0]} has no support point; give every class 0..{self.ways - 1} one"
            )
        if max(self.support.y) >= self.ways:
            raise ValueError(f"support label {max(self.support.y)} is not below ways={self.ways}")
        x_min, x_max, y_min, y_max = self.bounds
        if not (x_min < x_max and y_min < y_max):
            raise ValueError(
                "bounds must be [x_min, x_max, y_min, y_max] with x_min < x_max and y_min < y_max"
            )
        return self


class Truth(Strict):
    amplitude: Float(0.0, 10.0)
    phase: Float(-10.0, 10.0)


class MamlRequest(Strict):
    x: Annotated[list[Float(*explorers.X_RANGE)], Field(min_length=1, max_length=MAX_SUPPORT)]
    y: Annotated[list[Float(-Y_LIMIT, Y_LIMIT)], Field(min_length=1, max_length=MAX_SUPPORT)]
    steps: Int(0, 10) = 10
    points: Int(2, 500) = 200
    truth: Truth | None = None

    @model_validator(mode="after")
    def consistent(self) -> MamlRequest:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} values but y has {len(self.y)}; give one y per x")
        return self


class NeuralProcessRequest(Strict):
    x: Annotated[list[Float(*explorers.X_RANGE)], Field(max_length=MAX_SUPPORT)]
    y: Annotated[list[Float(-Y_LIMIT, Y_LIMIT)], Field(max_length=MAX_SUPPORT)]
    points: Int(2, 500) = 200
    truth: Truth | None = None

    @model_validator(mode="after")
    def consistent(self) -> NeuralProcessRequest:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} values but y has {len(self.y)}; give one y per x")
        return self


class LineRequest(Strict):
    x: Annotated[list[Float(*explorers.LINE_X_RANGE)], Field(max_length=MAX_EXAMPLES)]
    y: Annotated[list[Float(-Y_LIMIT, Y_LIMIT)], Field(max_length=MAX_EXAMPLES)]
    points: Int(2, 500) = 121

    @model_validator(mode="after")
    def consistent(self) -> LineRequest:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} values but y has {len(self.y)}; give one y per x")
        return self


class OmniglotRequest(Strict):
    ways: Int(2, 10) = 5
    seed: Int(0, MAX_SEED) = 0
    image: Annotated[str, Field(max_length=drawing.MAX_DATA_URL)] | None = None
    pixels: Annotated[list[Annotated[list[Float(0, 255)], Field(max_length=drawing.FRAME)]],
                      Field(max_length=drawing.FRAME)] | None = None  # fmt: skip

    @model_validator(mode="after")
    def one_input(self) -> OmniglotRequest:
        if (self.image is None) == (self.pixels is None):
            raise ValueError("send exactly one of image (a PNG data URL) or pixels (rows of grey values)")
        return self


def _rounded(t: torch.Tensor, digits: int = 5) -> Any:
    """A tensor as nested lists of floats rounded to ``digits`` (smaller JSON; display precision)."""
    return torch.round(t.double(), decimals=digits).tolist()


def create_app(
    models: WebModels | None = None, data_folder: Path = WEB_DATA, device: str | torch.device | None = None
) -> FastAPI:
    """The FastAPI application, with the shipped models loaded (once per process and device) on ``device`` (None:
    the CPU) unless ``models`` is given. Requests are parsed and answered on the CPU; the explorers move their
    tensors to the models' device and the results back."""
    models = models or web_models(data_folder, device)
    # no /docs page: FastAPI's loads its scripts from a CDN, which an offline machine cannot reach;
    # /openapi.json (served from here) describes every endpoint
    app = FastAPI(
        title="fewshot explorers",
        version=fewshot.__version__,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(json_content_type)],  # every POST endpoint, present and future
    )
    test_split: dict[str, Any] = {}
    split_lock = threading.Lock()

    def omniglot_test():
        with split_lock:  # decoded once (~1 s), by the thread below or the first request that needs it
            if "data" not in test_split:
                test_split["data"] = fewshot.omniglot("test")
            return test_split["data"]

    threading.Thread(target=omniglot_test, daemon=True, name="fewshot-web-omniglot").start()
    # The lines the transformer was trained on. (The tuned gradient-descent rates are computed by the first
    # request with each k, ~0.3 s each, not by a thread here: torch work in a daemon thread can abort the
    # interpreter when the process exits while it runs.)
    noise = float(models.incontext.info["training"]["noise"])

    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"error": validation_message(exc), "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = parse_error(exc) or str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(drawing.DrawingError)
    async def bad_drawing(request: Request, exc: drawing.DrawingError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(FloatingPointError)
    async def diverged(request: Request, exc: FloatingPointError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    for route, page in PAGES.items():
        app.add_api_route(route, _page(page), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict:
        return {
            "version": fewshot.__version__,
            "maml": models.maml.info,
            "pretrained": models.pretrained.info,
            "protonet": models.protonet.info,
            "incontext": models.incontext.info,
            "anp": models.anp.info,
        }

    @app.get("/api/protonet/task")
    def protonet_task(
        ways: Annotated[int, Query(ge=2, le=10)] = 5,
        shots: Annotated[int, Query(ge=1, le=10)] = 5,
        queries: Annotated[int, Query(ge=0, le=20)] = 10,
        seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
    ) -> dict:
        sampler = explorers.GaussianClusters(ways, shots, queries, seed)
        task = sampler.task()
        centres, stds = sampler.centres()
        return {
            "ways": ways, "shots": shots, "queries": queries, "seed": seed,
            "support": {"x": _rounded(task.support.x), "y": task.support.y.tolist()},
            "query": {"x": _rounded(task.query.x), "y": task.query.y.tolist()},
            "centres": _rounded(centres), "stds": _rounded(stds),
        }  # fmt: skip

    @app.post("/api/protonet/classify")
    def protonet_classify(body: ProtoNetRequest) -> dict:
        support = Split(torch.tensor(body.support.x), torch.tensor(body.support.y))
        points = torch.tensor(body.points, dtype=torch.float32).reshape(-1, 2)
        out = explorers.protonet_2d(support, body.ways, points, tuple(body.bounds), body.resolution)
        return {
            "ways": body.ways,
            "prototypes": _rounded(out["prototypes"]),
            "points": {"labels": out["labels"].tolist(), "probabilities": _rounded(out["probabilities"])},
            "grid": {
                "bounds": list(body.bounds),
                "resolution": body.resolution,
                "labels": out["grid_labels"].tolist(),
                "confidence": _rounded(out["grid_confidence"], 3),
            },
        }

    @app.get("/api/maml/task")
    def maml_task(
        shots: Annotated[int, Query(ge=1, le=50)] = 10,
        seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
        points: Annotated[int, Query(ge=2, le=500)] = 200,
    ) -> dict:
        task, amplitude, phase = explorers.sinusoid_task(seed, shots)
        x = explorers.sinusoid_grid(points)
        return {
            "seed": seed, "shots": shots, "amplitude": amplitude, "phase": phase,
            "support": {"x": _rounded(task.support.x[:, 0]), "y": _rounded(task.support.y[:, 0])},
            "curve": {"x": _rounded(x[:, 0]), "y": _rounded(explorers.true_curve(amplitude, phase, x)[:, 0])},
        }  # fmt: skip

    @app.post("/api/maml/adapt")
    def maml_adapt(body: MamlRequest) -> dict:
        inner_lr = float(models.maml.info["training"]["inner_lr"])
        support = Split(torch.tensor(body.x).unsqueeze(-1), torch.tensor(body.y).unsqueeze(-1))  # (k, 1) each
        grid = explorers.sinusoid_grid(body.points)  # (points, 1)
        x = torch.cat([grid, support.x])  # the curve, then the support points (for the support MSE)
        answer: dict[str, Any] = {"steps": body.steps, "inner_lr": inner_lr, "x": _rounded(grid[:, 0])}
        truth = (
            None if body.truth is None else explorers.true_curve(body.truth.amplitude, body.truth.phase, grid)
        )
        for name, loaded in (("maml", models.maml), ("pretrained", models.pretrained)):
            curves = explorers.adaptation_curves(loaded, support, body.steps, inner_lr, x)  # (steps + 1, n)
            on_grid, on_support = curves[:, : body.points], curves[:, body.points :]
            answer[name] = {
                "curves": _rounded(on_grid, 4),
                "support_mse": _rounded((on_support - support.y[:, 0]).square().mean(1)),
            }
            if truth is not None:
                answer[name]["true_mse"] = _rounded((on_grid - truth[:, 0]).square().mean(1))
        if truth is not None:
            answer["truth"] = {"y": _rounded(truth[:, 0], 4)}
        return answer

    @app.post("/api/maml/np")
    def maml_neural_process(body: NeuralProcessRequest) -> dict:
        k = len(body.x)
        support = Split(torch.tensor(body.x).reshape(k, 1), torch.tensor(body.y).reshape(k, 1))  # (k, 1) each
        grid = explorers.sinusoid_grid(body.points)  # (points, 1)
        x = torch.cat([grid, support.x])  # the curve, then the support points (for the support MSE)
        mean, sd = explorers.neural_process_curve(models.anp, support, x)  # (points + k,) each
        on_grid, on_support = mean[: body.points], mean[body.points :]
        answer: dict[str, Any] = {
            "k": k, "x": _rounded(grid[:, 0]), "mean": _rounded(on_grid, 4), "sd": _rounded(sd[: body.points], 4),
            "support_mse": round((on_support - support.y[:, 0]).square().mean().item(), 5) if k else None,
        }  # fmt: skip
        if body.truth is not None:
            truth = explorers.true_curve(body.truth.amplitude, body.truth.phase, grid)[:, 0]
            answer["true_mse"] = round((on_grid - truth).square().mean().item(), 5)
        return answer

    @app.get("/api/omniglot/support")
    def omniglot_support(
        ways: Annotated[int, Query(ge=2, le=10)] = 5, seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0
    ) -> dict:
        chosen = explorers.omniglot_support(omniglot_test(), ways, seed)
        return {
            "ways": ways,
            "seed": seed,
            "classes": [
                {"name": name, "image": drawing.png_data_url(chosen.images[k, 0].numpy())}
                for k, name in enumerate(chosen.names)
            ],
        }

    @app.post("/api/omniglot/classify")
    def omniglot_classify(body: OmniglotRequest) -> dict:
        grey = drawing.decode_png(body.image) if body.image is not None else drawing.from_pixels(body.pixels)
        image = drawing.to_omniglot(grey)  # (28, 28) uint8
        chosen = explorers.omniglot_support(omniglot_test(), body.ways, body.seed)
        query = torch.from_numpy(image.copy())[None, None]  # (1, 1, 28, 28)
        probabilities = explorers.omniglot_probabilities(models.protonet, chosen.prepared, query)[
            0
        ]  # (ways,)
        label = int(probabilities.argmax())
        return {
            "ways": body.ways,
            "seed": body.seed,
            "label": label,
            "name": chosen.names[label],
            "probabilities": _rounded(probabilities),
            "input": drawing.png_data_url(image),
        }

    @app.get("/api/incontext/task")
    def incontext_task(
        shots: Annotated[int, Query(ge=1, le=MAX_EXAMPLES)] = 5,
        seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
    ) -> dict:
        task, slope = explorers.line_task(seed, shots, noise)
        return {
            "seed": seed, "shots": shots, "noise": noise, "slope": round(slope, 5),
            "support": {"x": _rounded(task.support.x[:, 0]), "y": _rounded(task.support.y)},
        }  # fmt: skip

    @app.post("/api/incontext/predict")
    def incontext_predict(body: LineRequest) -> dict:
        support = Split(torch.tensor(body.x).reshape(-1, 1), torch.tensor(body.y))  # (k, 1), (k,)
        grid = explorers.line_grid(body.points)  # (points, 1)
        fits = explorers.line_fits(models.incontext, support, grid, noise)
        answer: dict[str, Any] = {"k": len(body.x), "noise": noise, "x": _rounded(grid[:, 0])}
        for name, fit in fits.items():
            answer[name] = {key: _rounded(v, 4) if key == "y" else round(v, 6) for key, v in fit.items()}
        return answer

    return app


def _page(name: str):
    """A GET handler for one explorer: ``static/page.html`` (head, styles, scripts) around the page's body.

    A page file's first line is ``<!-- title: ... -->``; the rest is its body. Built once, when the app is made.
    """
    shell = (STATIC / "page.html").read_text(encoding="utf-8")
    first, _, body = (STATIC / name).read_text(encoding="utf-8").partition("\n")
    title = first.removeprefix("<!-- title:").removesuffix("-->").strip()
    html = shell.replace("{title}", title).replace("{body}", body)

    def page() -> HTMLResponse:
        return HTMLResponse(html)

    page.__name__ = "page_" + name.removesuffix(".html")
    return page


__all__ = ["create_app"]
