"""The napari plugin shell: reader, sample data and dock widgets, all thin layers over the core.

Modules here import from ``polarstem`` (the core); the core never imports from here. Nothing heavy
(torch, abTEM) is imported when napari starts: only when a widget runs a job that needs it.
"""
