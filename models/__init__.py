"""Draft models: one file per draft type, the `DraftModel` contract and the registry.

Nothing here knows about training loops, data or the runtime; `specdec.models` imports
none of the other specdec packages. Importing the package registers every draft type, so
`load_draft` reads any of them, and their export formats (specdec.models.formats).
"""

from specdec.models import chimera, eagle1, eagle3, medusa, sdsat  # noqa: F401  (register the draft types)
from specdec.models import medusa_formats, eagle_formats, sdsat_formats  # noqa: F401  (register their export formats, in this order)
