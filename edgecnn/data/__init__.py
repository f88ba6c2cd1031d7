"""Data files shipped with edgecnn (read with importlib.resources; see edgecnn.labels).

imagenet_classes.txt: the 1000 ILSVRC-2012 class names, one per line, in class-index order
(the order torchvision's and every ImageNet checkpoint's logits use). Taken verbatim from
``_IMAGENET_CATEGORIES`` in torchvision/models/_meta.py of the torchvision 0.29.1 wheel on PyPI
(BSD 3-Clause License, Copyright (c) Soumith Chintala 2016, all rights reserved), so
`edgecnn run` prints the names torchvision's ``weights.meta["categories"]`` gives.
"""
