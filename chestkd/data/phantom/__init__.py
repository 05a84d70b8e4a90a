"""The phantoms: procedural chest radiographs, so everything runs with no download.

Two data sets are generated (and cached in ``$CHESTKD_HOME``) on demand:

* ``phantom``, the 14-finding multi-label phantom in the ChestX-ray14 layout
  (:mod:`~chestkd.data.phantom.multilabel`: ``write_phantom``, ``load_phantom``);
* ``pneumonia_phantom``, the single-label normal / pneumonia / COVID-19-like phantom in class
  folders (:mod:`~chestkd.data.phantom.pneumonia`: ``write_pneumonia_phantom``,
  ``load_pneumonia_phantom``).

Both draw the same normal chest (:mod:`~chestkd.data.phantom.anatomy`) and expose it the same
way (``multilabel.expose``). The 14 findings live in :mod:`~chestkd.data.phantom.findings`,
which images have which findings in :mod:`~chestkd.data.phantom.labels`, the reported-label
noise in :mod:`~chestkd.data.phantom.label_noise`, and the single-label phantom's patterns in
:mod:`~chestkd.data.phantom.pneumonia_patterns`.
"""
from chestkd.data.phantom.multilabel import load_phantom, write_phantom
from chestkd.data.phantom.pneumonia import load_pneumonia_phantom, write_pneumonia_phantom

__all__ = ["load_phantom", "write_phantom", "load_pneumonia_phantom", "write_pneumonia_phantom"]
