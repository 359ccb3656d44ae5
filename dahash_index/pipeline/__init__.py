"""The build pipeline: stages as plain callables (``stages``) and the runners that wire them
(``runner``: the local engine and the engine registry; ``ray_runner``: Ray)."""
