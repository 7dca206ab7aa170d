// Validates an OpenAPI 3 description with @apidevtools/swagger-parser (the structure against
// the OpenAPI 3.0 schema, every $ref resolvable, path parameters declared).
// node validate_openapi.js FILE; exit 0 valid, 1 invalid, 77 (ctest: skipped) without the
// validator (scripts/install-deps.sh installs it into OTA_NODE_MODULES).
let SwaggerParser;
try {
  SwaggerParser = require("@apidevtools/swagger-parser");
} catch (e) {
  console.error("validate_openapi: @apidevtools/swagger-parser is not installed " +
                "(scripts/install-deps.sh installs it): " + e.message);
  process.exit(77);
}
const file = process.argv[2];
SwaggerParser.validate(file)
  .then((api) => {
    const paths = Object.keys(api.paths);
    let operations = 0;
    for (const p of paths) operations += Object.keys(api.paths[p]).filter((k) => k !== "parameters").length;
    console.log(`${file}: valid OpenAPI ${api.openapi}, ${paths.length} paths, ${operations} operations`);
  })
  .catch((e) => {
    console.error(`${file}: invalid: ${e.message}`);
    process.exit(1);
  });
