"""Serve an index over HTTP: the API and the search page (extra ``modalign[serve]``)."""
