// The VS Code side of pipec: start `pipec lsp` for .pipe files and let the language
// client speak LSP to it over stdio. Everything else (diagnostics, hover, completion,
// formatting...) is the server's; highlighting is pipe.tmLanguage.json.
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("pipec").get("server.command", ["pipec", "lsp"]);
  const server = { command: command[0], args: command.slice(1) };
  client = new LanguageClient("pipec", "pipec", server, {
    documentSelector: [{ scheme: "file", language: "pipe" }],
  });
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
