"""The web page and JSON API for single lesions (`melanoma serve`); server.py builds the FastAPI app."""
