"""The page's views, one module per tab: each builds its components, computes what it shows
from a stored run (through `Service`, never the model directly) and wires its own events.
`playground/ui.py` composes them and owns what they share: the run, the layer and head menus,
the heatmap's window."""
