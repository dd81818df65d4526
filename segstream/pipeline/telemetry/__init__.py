"""What a run tells about itself: per-stage stats, per-frame timing, the Prometheus endpoint,
the status line, the end-of-run summary and the report plots."""
