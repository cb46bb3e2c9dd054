"""Celery settings for mcp-broker (read by `workers.app`).

The choices follow ../shared/ENGINEERING_NOTES.md: late acks + reject on
worker loss so a killed worker's calls are redelivered; prefetch 1 so a short
call never waits behind a long one; no Celery result backend traffic for calls
(results travel on our own Redis channel, written once per call id).
"""

import os

from broker.redisconn import keepalive_options, redis_timeout

_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

broker_url = _redis
result_backend = _redis
result_expires = 3600
broker_connection_retry_on_startup = True
# A dead link to Redis is found in seconds (issue 12, half-open partition), as for our own client
# (broker/redisconn.py): every command but kombu's BRPOP (it waits for readability, then reads) times out
# after MCP_BROKER_REDIS_TIMEOUT_S (5 s), TCP keepalive probes after 5 s idle, and kombu drops a BRPOP whose
# reply is overdue by health_check_interval (its BRPOP asks the server for 1 s): a consumer behind a
# half-open link reconnects within ~6-11 s instead of waiting on the socket for TCP's two hours.
_link = {
    "socket_timeout": redis_timeout(),
    "socket_connect_timeout": redis_timeout(),
    "socket_keepalive": True,
    "socket_keepalive_options": keepalive_options(),
    "health_check_interval": 5,
    "retry_on_timeout": False,
}
# priority_steps [0]: the broker sends no priorities, so each queue is one Redis list, which lets a worker
# fetch with BLMOVE (no message lost with a fetch reply: workers/transport.py) instead of BRPOP over 4 lists
broker_transport_options = {"visibility_timeout": 3600, "priority_steps": [0], **_link}
broker_connection_timeout = redis_timeout()
redis_socket_timeout = redis_timeout()
redis_socket_connect_timeout = redis_timeout()
redis_socket_keepalive = True
redis_retry_on_timeout = False
redis_backend_health_check_interval = 5
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
