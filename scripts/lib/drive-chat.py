"""Sends COUNT sequential chat completions (model m-fast) over one keep-alive connection and fails on any
answer but 200. For the benchmarks that count what a node spends per request.
    python3 scripts/lib/drive-chat.py PORT COUNT [PATH]     (PATH: /v1/chat/completions)"""
import http.client, json, sys

port, count = int(sys.argv[1]), int(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "/v1/chat/completions"
connection = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"model": "m-fast", "messages": [{"role": "user", "content": "x"}]})
for _ in range(count):
    connection.request("POST", path, body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
