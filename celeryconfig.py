"""Celery settings for mcp-broker (read by `workers.app`).

The choices follow ../shared/ENGINEERING_NOTES.md: late acks + reject on
worker loss so a killed worker's calls are redelivered; prefetch 1 so a short
call never waits behind a long one; no Celery result backend traffic for calls
(results travel on our own Redis channel, written once per call id).
"""

import os

_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

broker_url = _redis
result_backend = _redis
result_expires = 3600
broker_connection_retry_on_startup = True
broker_transport_options = {"visibility_timeout": 3600}
if _redis.split("://", 1)[0] in ("redis", "rediss"):
    # kombu's Redis transport, leasing each fetched message to its worker in the same transaction
    # (workers/transport.py): a SIGKILLed worker's messages are restored in seconds, not an hour
    broker_transport = "workers.transport:LeasedRedisTransport"
broker_pool_limit = 50

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
task_create_missing_queues = True
task_default_queue = "mcp.default"

worker_prefetch_multiplier = 1
worker_hijack_root_logger = False
worker_redirect_stdouts = False
worker_send_task_events = False
