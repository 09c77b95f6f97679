// The official JavaScript LangGraph SDK (@langchain/langgraph-sdk) against an Agent Server:
//   node client.mjs URL API_KEY [runs]
// prints one JSON object of what the client got (tests/agentapi/test_js_sdk.py asserts it).
// With "runs": also runs.wait on pipeline and runs.stream on chat (messages-tuple, custom, ...).
import { Client } from "@langchain/langgraph-sdk";

const [url, apiKey, withRuns] = process.argv.slice(2);
const client = new Client({ apiUrl: url, apiKey });
const out = {};

const assistants = await client.assistants.search({
  metadata: { created_by: "system" }, sortBy: "graph_id", sortOrder: "asc",
});
out.assistants = assistants.map((a) => ({
  assistant_id: a.assistant_id, graph_id: a.graph_id, name: a.name, version: a.version,
  metadata: a.metadata,
}));

const thread = await client.threads.create({ metadata: { from: "js" }, graphId: "pipeline" });
out.thread = { status: thread.status, metadata: thread.metadata, values: thread.values,
  interrupts: thread.interrupts };
const state = await client.threads.getState(thread.thread_id);
out.state = { values: state.values, next: state.next, tasks: state.tasks,
  checkpoint: state.checkpoint };

try {
  await client.threads.get("00000000-0000-4000-8000-000000000000");
  out.unknown = "found";
} catch (error) {
  out.unknown = { status: error.status, message: error.message };
}

if (withRuns === "runs") {
  out.wait = await client.runs.wait(thread.thread_id, "pipeline", {
    input: { text: "  Hello From Node " },
  });
  out.state_after_wait = (await client.threads.getState(thread.thread_id)).values;
  const chat = await client.threads.create();
  const events = [];
  const tokens = [];
  let custom = null;
  for await (const part of client.runs.stream(chat.thread_id, "chat", {
    input: { messages: [{ role: "user", content: "what is 2 + 3?" }] },
    streamMode: ["values", "updates", "messages-tuple", "custom"],
  })) {
    events.push(part.event);
    if (part.event === "messages" && part.data[0].type === "AIMessageChunk" && part.data[0].content) {
      tokens.push(part.data[0].content);
    }
    if (part.event === "custom") custom = part.data;
  }
  out.stream = { events, tokens, custom };
  const last = (await client.threads.getState(chat.thread_id)).values.messages.at(-1);
  out.answer = { type: last.type, content: last.content };
}

process.stdout.write(JSON.stringify(out) + "\n");
