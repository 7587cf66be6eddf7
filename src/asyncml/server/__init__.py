"""Serving models and pipelines over HTTP: an ASGI app with batching, deadlines, overload
control and metrics, and a way to run it on uvicorn.

::

    app = asyncml.server.create_app({"digits": asyncml.load(Digits, max_queue=512)})
    await asyncml.server.serve(app, port=8000)          # or: uvicorn module:app

A :class:`~asyncml.Pipeline` is served like a model: ``create_app({"ocr": pipeline})``.

The app can also be mounted in a Starlette or FastAPI app; enter ``app.running()`` in that
app's lifespan (see ``docs/serving.md``). This package imports Starlette and uvicorn;
``import asyncml`` does not import it.
"""

from ._app import ServingApp, create_app
from ._models import State
from ._serve import RunningServer, serve, serving

__all__ = ["RunningServer", "ServingApp", "State", "create_app", "serve", "serving"]
