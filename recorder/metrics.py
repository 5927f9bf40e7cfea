"""Prometheus metrics of the recorder (module-level, bounded labels: kind only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_RECORDINGS = Gauge("classmesh_recorder_active_recordings", "Recording copies currently running")
BYTES_WRITTEN = Counter("classmesh_recorder_bytes_written_total", "Encoded media bytes written", ["kind"])
SEGMENTS = Counter("classmesh_recorder_segments_total", "Segments completed (fsynced and listed)")
GAPS = Counter("classmesh_recorder_gaps_total", "Gaps noted in recorded tracks", ["kind"])
LEASES_LOST = Counter(
    "classmesh_recorder_leases_lost_total", "Jobs this worker stopped because their lease lapsed or was revoked"
)
NACKED_PACKETS = Counter(
    "classmesh_recorder_nacked_packets_total", "Packets missing from plain RTP and asked again from the node"
)
STORAGE_ERRORS = Counter("classmesh_recorder_storage_errors_total", "Storage errors by code", ["code"])
UPLOADS = Counter("classmesh_recorder_uploads_total", "Spool files uploaded to the storage (S3)")
UPLOADED_BYTES = Counter("classmesh_recorder_uploaded_bytes_total", "Bytes uploaded from the spool to the storage")
UPLOAD_FAILURES = Counter("classmesh_recorder_upload_failures_total", "Upload attempts that failed (retried)")
UPLOAD_BACKLOG = Gauge("classmesh_recorder_upload_backlog", "Segments in the spool waiting for upload")
COVERAGE = Histogram(
    "classmesh_recorder_coverage_ratio",
    "Coverage of finished recordings (recorded seconds / seconds of media sent)",
    buckets=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0),
)
