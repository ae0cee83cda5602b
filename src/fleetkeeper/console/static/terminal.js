// The device terminal page: xterm.js on the terminal WebSocket (docs/terminal.md, "Protocol").
// Binary frames carry terminal bytes after a one-byte length and the session id; text frames are
// JSON control messages. The console's session cookie authenticates the WebSocket.
"use strict";

(function () {
  // xterm.js writes the styles it computes (theme, cell size, scrollbar) into <style> elements,
  // which this page's Content-Security-Policy refuses (no 'unsafe-inline'). Styles applied through
  // the CSSOM are not inline: the text of each <style> element xterm creates goes into a
  // constructed stylesheet instead, and the element itself stays empty.
  function routeStyleElementsToConstructedSheets(doc) {
    var createElement = doc.createElement;
    doc.createElement = function (name, options) {
      var element = createElement.call(doc, name, options);
      if (String(name).toLowerCase() !== "style") { return element; }
      var sheet = new CSSStyleSheet();
      var text = "";
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.concat([sheet]);
      ["textContent", "innerText", "innerHTML"].forEach(function (property) {
        Object.defineProperty(element, property, {
          get: function () { return text; },
          set: function (value) { text = String(value); sheet.replaceSync(text); }
        });
      });
      var remove = element.remove.bind(element);
      element.remove = function () {
        doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter(function (s) { return s !== sheet; });
        remove();
      };
      return element;
    };
  }

  // Cells in 24-bit or 256 colours get their colours as a style attribute, which the policy
  // refuses too; the same declarations set through the CSSOM (style.cssText) are allowed.
  function routeStyleAttributesToCssom() {
    var setAttribute = Element.prototype.setAttribute;
    Element.prototype.setAttribute = function (name, value) {
      if (String(name).toLowerCase() === "style") {
        this.style.cssText = String(value);
        return;
      }
      setAttribute.call(this, name, value);
    };
  }

  var encoder = new TextEncoder();

  function frame(session, bytes) {
    var id = encoder.encode(session);
    var out = new Uint8Array(1 + id.length + bytes.length);
    out[0] = id.length;
    out.set(id, 1);
    out.set(bytes, 1 + id.length);
    return out;
  }

  function start() {
    var element = document.getElementById("terminal");
    if (!element) { return; }
    var status = document.getElementById("terminal-status");
    function say(text) { status.textContent = text; }

    routeStyleElementsToConstructedSheets(document);
    routeStyleAttributesToCssom();
    var term = new window.Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
    var fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(element);
    fit.fit();
    term.focus();

    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + window.location.host + element.getAttribute("data-socket") +
      "?cols=" + term.cols + "&rows=" + term.rows;
    var socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    var session = null;

    socket.addEventListener("message", function (event) {
      if (typeof event.data !== "string") {
        var bytes = new Uint8Array(event.data);
        term.write(bytes.subarray(1 + bytes[0]));
        return;
      }
      var message = JSON.parse(event.data);
      if (message.type === "opened") {
        session = message.session;
        element.setAttribute("data-session", session);
        say("connected (session " + session + ")");
      } else if (message.type === "closed") {
        say("session closed: " + (message.reason || "") + (message.message ? " — " + message.message : ""));
      } else if (message.type === "refused" || message.type === "error") {
        say("refused: " + (message.message || message.code));
      }
    });
    socket.addEventListener("close", function () {
      if (session === null && status.textContent === "connecting…") { say("the connection closed"); }
      element.setAttribute("data-closed", "true");
    });

    term.onData(function (data) {
      if (session !== null && socket.readyState === WebSocket.OPEN) {
        socket.send(frame(session, encoder.encode(data)));
      }
    });
    term.onResize(function (size) {
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
      }
    });
    window.addEventListener("resize", function () { fit.fit(); });
    document.getElementById("terminal-close").addEventListener("click", function () {
      if (socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify({ type: "close" })); }
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
