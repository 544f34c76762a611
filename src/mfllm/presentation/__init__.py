"""Presentation: the templates (one engine) of every report and app page, chart specs, and the web app (``mfllm ui``)."""
