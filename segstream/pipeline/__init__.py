"""The runtime: the supervisor and its plan, the stage processes, and what links them (wire/),
feeds them (sources/), takes their results (sinks/) and measures them (telemetry/)."""
