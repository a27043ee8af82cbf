/* Starts Swagger UI on our OpenAPI document. Loaded from a file: the page's CSP allows no
   inline script. validatorUrl null: the default sends the document to validator.swagger.io. */
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    validatorUrl: null,
    showExtensions: true,
    showCommonExtensions: true,
    persistAuthorization: false,
    // Tags closed at first: with every operation open, Swagger UI 5 stalls on a document of this size
    // (OpenAPI 3.1), and a list of tags is easier to read; an operation opens with its tag.
    docExpansion: "none",
  });
})();
