package syncapi

// RelationsMigrations lets tests replay the relations backfill.
var RelationsMigrations = relationsMigrations

// RelationsComponent is the migrations' component name.
const RelationsComponent = relationsComponent
