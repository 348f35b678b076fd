"""A Python agent taking part in agentd's durable messages with nothing but
redis-py (contract.md, "Durable messages"). The snippets in docs/durable.md
are the same code.

    python3 durable_agent.py URL COMMAND [ARGS...]

Commands (result on stdout as JSON):
    send TARGET EVENT JSON              append to inbox:TARGET and ring its doorbell
    submit DEN EVENT JSON               append to den:DEN:tasks and ring its doorbell
    request ME TARGET EVENT JSON MS     send a request with replyTo=ME, wait for the reply in inbox:ME
    serve ME COUNT                      answer COUNT requests arriving in inbox:ME (group agentd)
"""
import json
import sys
import time
import uuid

import redis


def append(r, key, envelope):
    entry_id = r.xadd(key, {"envelope": json.dumps(envelope)}, maxlen=10000, approximate=True)
    r.publish(key, entry_id)  # the doorbell: optional, the receiver also polls
    return entry_id


def main():
    url, command, *args = sys.argv[1:]
    r = redis.Redis.from_url(url, decode_responses=True)

    if command == "send":
        target, event, data = args
        print(json.dumps(append(r, f"inbox:{target}", {"event": event, "data": json.loads(data)})))
    elif command == "submit":
        den, event, data = args
        print(json.dumps(append(r, f"den:{den}:tasks", {"event": event, "data": json.loads(data)})))
    elif command == "request":
        me, target, event, data, timeout_ms = args
        request_id = str(uuid.uuid4())
        append(r, f"inbox:{target}", {"event": event, "data": json.loads(data), "id": request_id, "replyTo": me})
        deadline = time.time() + int(timeout_ms) / 1000
        last = "0"
        while time.time() < deadline:
            got = r.xread({f"inbox:{me}": last}, block=200, count=10)
            for _stream, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    reply = json.loads(fields["envelope"])
                    if reply.get("event") == "reply" and reply.get("inReplyTo") == request_id:
                        r.delete(f"inbox:{me}")
                        print(json.dumps(reply))
                        return
        print(json.dumps({"timeout": True}))
        sys.exit(1)
    elif command == "serve":
        me, count = args
        inbox = f"inbox:{me}"
        r.set(f"agent:{me}:heartbeat", int(time.time() * 1000), ex=60)
        try:
            r.xgroup_create(inbox, "agentd", id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        print(json.dumps("serving"), flush=True)
        answered = []
        while len(answered) < int(count):
            got = r.xreadgroup("agentd", me, {inbox: ">"}, count=10, block=1000)
            for _stream, entries in got:
                for entry_id, fields in entries:
                    request = json.loads(fields["envelope"])
                    if "replyTo" in request and "id" in request:
                        reply = {"event": "reply", "inReplyTo": request["id"], "ok": True,
                                 "data": {"doubled": request["data"] * 2, "by": me}}
                        append(r, f"inbox:{request['replyTo']}", reply)
                        answered.append(request["id"])
                    r.xack(inbox, "agentd", entry_id)
        r.delete(f"agent:{me}:heartbeat")
        print(json.dumps(answered))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
