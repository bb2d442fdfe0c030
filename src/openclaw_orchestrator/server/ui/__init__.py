"""The dashboard's files (``static/``: index.html, login.html, app.js, app.css), served at
``/ui`` by :mod:`openclaw_orchestrator.server.api.ui`. Plain HTML, one vanilla JavaScript
module and one stylesheet: nothing to build, nothing loaded from elsewhere."""
