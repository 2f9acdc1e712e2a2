"""What a run did: the :class:`~onnxrep.report.report.Report` as data and text (``report``), its HTML page
(``html``), and the terminal it is printed on (``terminal``)."""
