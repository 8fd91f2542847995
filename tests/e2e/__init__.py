"""End-to-end tests: real JupyterLab driven by Chromium (pytest -m e2e)."""
