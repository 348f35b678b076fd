"""A small agent in Python, written to the reference article's conventions,
used by the interop tests: it writes and reads the same keys agentd does.

    python3 seed_agent.py URL AGENT COMMAND [ARGS...]

Commands (results on stdout as JSON):
    add-message SESSION ROLE CONTENT     append, keep the last 20, expire in 1 h
    context SESSION                      print the session's messages
    raw-messages SESSION                 print the list entries as stored
    cache-set PROMPT MODEL RESPONSE      cache a response for 1 h
    cache-get PROMPT MODEL               print the cached response (or null)
    cache-key PROMPT MODEL               print the cache key
    task-set TASK STATUS                 task status for 24 h
    task-get TASK                        print the task status
    publish EVENT JSON                   publish {"event", "data"} on agent:events:EVENT
    clear                                delete every agent:<id>:* key (SCAN)
"""
import hashlib
import json
import sys

import redis

MAX_MESSAGES = 20


def main():
    url, agent, command, *args = sys.argv[1:]
    client = redis.Redis.from_url(url, decode_responses=True)

    def messages_key(session):
        return f"agent:{agent}:session:{session}:messages"

    def cache_key(prompt, model):
        digest = hashlib.sha256(f"{model}:{prompt}".encode()).hexdigest()
        return f"agent:{agent}:llm_cache:{digest}"

    if command == "add-message":
        session, role, content = args
        key = messages_key(session)
        pipe = client.pipeline()
        pipe.rpush(key, json.dumps({"role": role, "content": content}))
        pipe.ltrim(key, -MAX_MESSAGES, -1)
        pipe.expire(key, 3600)
        pipe.execute()
        result = True
    elif command == "context":
        result = [json.loads(m) for m in client.lrange(messages_key(args[0]), 0, -1)]
    elif command == "raw-messages":
        result = client.lrange(messages_key(args[0]), 0, -1)
    elif command == "cache-set":
        prompt, model, response = args
        client.setex(cache_key(prompt, model), 3600, response)
        result = True
    elif command == "cache-get":
        result = client.get(cache_key(*args))
    elif command == "cache-key":
        result = cache_key(*args)
    elif command == "task-set":
        task, status = args
        client.setex(f"agent:{agent}:task:{task}:status", 86400, status)
        result = True
    elif command == "task-get":
        result = client.get(f"agent:{agent}:task:{args[0]}:status")
    elif command == "publish":
        event, data = args
        result = client.publish(f"agent:events:{event}", json.dumps({"event": event, "data": json.loads(data)}))
    elif command == "clear":
        count = 0
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, match=f"agent:{agent}:*", count=100)
            if keys:
                count += client.delete(*keys)
            if cursor == 0:
                break
        result = count
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
