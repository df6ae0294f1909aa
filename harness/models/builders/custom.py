"""The ``custom`` family: architectures that no stock library builds as they are.

Each entry names a module with ``build(spec)``, an extractor class and a checkpoint
``rename_keys(model, state)``. The Dockerfile's ``constructor`` label picks the entry;
the extra packages it imports are pinned by the Dockerfile's ``packages`` label.
"""

from __future__ import annotations

from harness.models.builders import ctranspath, musk

#: constructor label -> (build, extractor class, rename)
CONSTRUCTORS = {
    "ctranspath": (ctranspath.build, ctranspath.SwinExtractor, ctranspath.rename_keys),
    "musk_large_patch16_384": (musk.build, musk.MuskExtractor, None),
}
