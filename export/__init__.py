"""Export and conversion tools (need the ``[train]`` extra). Never imported by the runtime."""
