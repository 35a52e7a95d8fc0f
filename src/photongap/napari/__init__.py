"""photongap in napari: dock widgets to train, denoise, sample posteriors and generate.

An npe2 plugin (``napari.yaml``, found through the ``napari.manifest`` entry point) installed by
``pip install "photongap[napari]"``. Nothing here is imported by ``import photongap`` or by the
command line, so napari and Qt stay optional.

Modules: :mod:`.layers` (layers to photon counts; what a result layer keeps of its source),
:mod:`.jobs` (thread workers with progress, Cancel and one-line errors), :mod:`.forms` (the
fields the widgets share), :mod:`.live_training` and :mod:`.loss_plot` (training progress),
one module per widget (:mod:`.train`, :mod:`.denoise`, :mod:`.sample`, :mod:`.generate`) and
:mod:`.sample_data`.
"""
