"""The seven sections of a Project's spec, one module each, in the manifest's order:
``project``, ``environment``, ``servers``, ``resources``, ``features``, ``monitoring``, ``backup``.
`schemas.project` puts them together (`ProjectSpec`) and is where the rest of the code imports them from."""
