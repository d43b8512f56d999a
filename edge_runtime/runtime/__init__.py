"""Running a stream: ``stream`` (the loop), ``labels`` (labels taught during a run), ``summary``
(timings, the run summary, progress line), ``shutdown`` (signals), ``metrics`` (Prometheus), and
``source_memory`` (a source memory built from labelled images)."""
