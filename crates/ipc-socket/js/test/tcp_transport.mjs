// A byte-stream transport over TCP for Node (the tests): the same frames as over a
// WebSocket, without the message boundaries. Not part of the browser module.
import net from "node:net";
import { bufferedTransport } from "../ipc_client.mjs";

export function tcpTransport(host, port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const transport = bufferedTransport({
      send(bytes) {
        socket.write(bytes);
      },
      close() {
        socket.end();
      },
    });
    socket.once("connect", () => {
      socket.removeListener("error", reject);
      socket.on("error", () => {});
      resolve(transport);
    });
    socket.once("error", reject);
    socket.on("data", (chunk) => transport.onbytes(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length)));
    socket.on("close", () => transport.onend(null));
  });
}
