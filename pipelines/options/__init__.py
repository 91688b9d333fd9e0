"""One options dataclass per command: every option's flag, default, help, units and checks.

The ``landslides`` flags (:func:`~pipelines.options.fields.add_arguments`), a scan YAML's
``source:``/``predict:``/``compare:`` keys and the Flex Template's parameters
(:mod:`~pipelines.options.template`) are all generated from these dataclasses, so an option
added to one is accepted everywhere at once (``tests/test_options.py`` checks it).
:mod:`~pipelines.options.commands` names each command's dataclass and the function that
runs it.

Modules are light (no Beam, no TensorFlow, no GDAL) except :mod:`.train`, which reads the
training settings off :class:`model.train.config.TrainConfig`, and the few that read the
options of a configuration defined elsewhere (:mod:`.synth`, :mod:`.terrain`,
:mod:`.import_l4s`).
"""
