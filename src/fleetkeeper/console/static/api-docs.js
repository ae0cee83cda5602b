// Starts Swagger UI on /api/docs. It lives in a file of its own because the page's
// Content-Security-Policy runs no inline script; the page says where the OpenAPI document is.
"use strict";

(function () {
  var container = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: container.getAttribute("data-openapi-url"),
    domNode: container,
    layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis],
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Swagger UI would otherwise send the document to its public validator for a badge.
    validatorUrl: null
  });
})();
