"""The web console: a server-rendered UI (Jinja2, htmx served by the app) and a JSON API on the
services layer, one ``Services`` object per process."""
