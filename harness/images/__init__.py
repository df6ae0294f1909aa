"""Model images: build them offline, record what is in them, publish them, pin them, verify them.

* :mod:`.build` -- the base (Python, the locked wheels, pinned Debian packages, the harness)
  and one thin image per ``models/<name>/Dockerfile``, built with the network off;
* :mod:`.manifest` -- every Debian and Python package in an image, with versions and hashes;
* :mod:`.lock` -- ``models/images.lock``: registry, digest, base digest, manifest hash;
* :mod:`.registry` -- publish, pull by digest, the image a run uses;
* :mod:`.verify` -- an image against its lock entry, difference by difference.

docs/docker.md is the user's path through them.
"""
