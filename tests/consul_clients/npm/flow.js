// The npm consul client (2.0.1), unchanged, through the flow a Node service runs:
// register with a TTL check, pass it, find it with passing, list the catalog, watch
// with blocking queries until a change shows, deregister. Prints one JSON line of what
// it saw; the Python test (test_consul_clients.py) checks it.
const Consul = require("consul");

async function main() {
  const [host, port, token] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
  const consul = new Consul({ host, port, defaults: token ? { token } : {} });
  const seen = {};
  seen.node = (await consul.agent.self()).Config.NodeName;
  await consul.agent.service.register({
    name: "node-web", id: "node-web-1", address: "10.3.0.1", port: 3000, tags: ["js"],
    check: { ttl: "10s" },
  });
  seen.before = (await consul.health.service({ service: "node-web", passing: true })).length;
  await consul.agent.check.pass({ id: "service:node-web-1", note: "ok" });
  const healthy = await consul.health.service({ service: "node-web", passing: true });
  seen.passing = healthy.map((e) => [e.Service.ID, e.Service.Address, e.Service.Port]);
  seen.catalog = await consul.catalog.service.list();
  seen.rows = (await consul.catalog.service.nodes("node-web")).map((r) => r.ServiceID);

  // A watch (blocking queries with index and wait) sees a change made after it started.
  const watch = consul.watch({
    method: consul.health.service,
    options: { service: "node-web", wait: "5s" },
  });
  const statuses = [];
  let changedAt = 0;
  const done = new Promise((resolve, reject) => {
    watch.on("change", (data) => {
      statuses.push(data[0].Checks[1].Status);
      if (statuses.length === 1) {
        setTimeout(async () => {
          changedAt = Date.now();
          await consul.agent.check.fail({ id: "service:node-web-1", note: "down" });
        }, 300);
      } else {
        seen.watch_ms = Date.now() - changedAt;
        resolve();
      }
    });
    watch.on("error", reject);
  });
  await done;
  watch.end();
  seen.statuses = statuses;
  await consul.agent.service.deregister("node-web-1");
  seen.after = await consul.health.service("node-web");
  console.log(JSON.stringify(seen));
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
